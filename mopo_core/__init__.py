"""MOPO Studio's engine: exact tabular MOPO, Algorithm 1, baselines, Pareto metrics, run store."""
from .iterative import Algorithm1Config, Algorithm1Result, run_algorithm1
from .runs import RunStore
from .tabular import SweepResult, TabularSolution, policy_values, solve_tabular, sweep_thresholds, win_rates

__all__ = [
    "solve_tabular",
    "sweep_thresholds",
    "TabularSolution",
    "SweepResult",
    "win_rates",
    "policy_values",
    "run_algorithm1",
    "Algorithm1Config",
    "Algorithm1Result",
    "RunStore",
]
__version__ = "0.1.0"
