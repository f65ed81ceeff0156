"""Synthetic tabular benchmark: canonical preference structures with a known answer
(SYNTHETIC.md), and comparison datasets sampled from them."""
from synthetic.sampling import (
    ComparisonData,
    empirical_win_rates,
    estimate_preferences,
    exact_win_counts,
    sample_comparisons,
)
from synthetic.structures import (
    PARAMETER_CHOICES,
    STRUCTURES,
    TWO_OBJECTIVE_STRUCTURES,
    Structure,
    make_structure,
    structure_parameters,
)

__all__ = [
    "STRUCTURES",
    "TWO_OBJECTIVE_STRUCTURES",
    "ComparisonData",
    "Structure",
    "empirical_win_rates",
    "estimate_preferences",
    "exact_win_counts",
    "make_structure",
    "sample_comparisons",
    "structure_parameters",
    "PARAMETER_CHOICES",
]
