"""MOPO Studio's engine: exact tabular MOPO, Algorithm 1, baselines, Pareto metrics, run store."""
from .tabular import SweepResult, TabularSolution, policy_values, solve_tabular, sweep_thresholds, win_rates

__all__ = ["solve_tabular", "sweep_thresholds", "TabularSolution", "SweepResult", "win_rates", "policy_values"]
__version__ = "0.1.0"
