"""Tests of the synthetic package (synthetic/): the structures and the comparison datasets sampled
from them, and the text task's exact scorers, oracles and seeded generation. No fixtures or skip
rules of its own."""
