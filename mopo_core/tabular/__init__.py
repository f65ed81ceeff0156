"""Tabular MOPO on finite response sets: the exact solver (closed form + convex dual, robust eps),
Algorithm 1 and MOPO-LB on softmax logits, the shared optimiser and the tabular baselines.
numpy/scipy only; imports nothing from ``lm`` or ``training``."""
from importlib import import_module

_HOME = {  # public name -> the module that defines it (imported on first use)
    'Adam': 'optim',
    'AdamConfig': 'optim',
    'Algorithm1Config': 'algorithm1',
    'Algorithm1Result': 'algorithm1',
    'BARRIER_MAX_ITER': 'algorithm1',
    'BARRIER_TOL': 'algorithm1',
    'BASELINES': 'baselines',
    'BootstrapResult': 'uncertainty',
    'FEASIBILITY_TOL': 'solver',
    'INFEASIBLE_BACKOFF': 'solver',
    'MARGIN_MAX_ROUNDS': 'uncertainty',
    'MARGIN_TOL': 'uncertainty',
    'MAX_MULTIPLIER': 'solver',
    'METHODS': 'solver',
    'MODPO_MIN_PRIMARY_WEIGHT': 'baselines',
    'MarginSolution': 'uncertainty',
    'MethodResult': 'baselines',
    'SweepResult': 'solver',
    'TabularProblem': 'solver',
    'TabularSolution': 'solver',
    'TiltFamily': 'solver',
    'VARIANTS': 'algorithm1',
    'attainable_maxima': 'solver',
    'barrier_multiplier': 'algorithm1',
    'barrier_multipliers': 'algorithm1',
    'barrier_slack': 'algorithm1',
    'bootstrap': 'uncertainty',
    'bt_win_rates': 'baselines',
    'chebyshev_margin': 'solver',
    'chi_dual_value': 'robust',
    'chi_gradient': 'robust',
    'dpo_primary': 'baselines',
    'eps_for_sample_size': 'uncertainty',
    'fit_bt_rewards': 'baselines',
    'ipo_primary': 'baselines',
    'kl_divergence': 'solver',
    'minimise': 'optim',
    'policy_values': 'solver',
    'resample_win_rates': 'uncertainty',
    'reward_lagrangian': 'baselines',
    'rewarded_soups': 'baselines',
    'robust_lower_bound': 'robust',
    'run_algorithm1': 'algorithm1',
    'scalarised_ipo': 'baselines',
    'solve_batched': 'uncertainty',
    'solve_family': 'solver',
    'solve_scores': 'solver',
    'solve_tabular': 'solver',
    'solve_with_margin': 'uncertainty',
    'standard_errors': 'uncertainty',
    'sweep_thresholds': 'solver',
    'weight_grid': 'baselines',
    'weighted_dpo': 'baselines',
    'win_rates': 'solver',
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
