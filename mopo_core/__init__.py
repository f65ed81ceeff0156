"""MOPO Studio's engine: exact tabular MOPO, Algorithm 1, baselines, Pareto metrics, run store."""
from mopo_core.tabular.algorithm1 import Algorithm1Config, Algorithm1Result, run_algorithm1
from mopo_core.runs import RunStore
from mopo_core.tabular.solver import SweepResult, TabularSolution, policy_values, solve_tabular, sweep_thresholds, win_rates

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
