"""Tests of the experiments layer (mopo_core/experiments): ablations, the comparison suite and its
command line. No fixtures or skip rules of its own."""
