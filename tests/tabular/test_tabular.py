"""The exact tabular solver against independent answers (SLSQP primal, LP, hand checks)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mopo_core import solve_tabular, sweep_thresholds
from mopo_core.pareto import attainable_max, lp_best_primary
from mopo_core.tabular.robust import robust_lower_bound
from mopo_core.tabular.solver import policy_values, win_rates
from synthetic import STRUCTURES, make_structure
from tests.reference_solvers import (
    best_worst_slack_lp,
    primal_slsqp,
    rates_reference,
    robust_bound_slsqp,
    values_reference,
)


def _thresholds_between(structure, fractions):
    """Thresholds a given fraction of the way from the reference's values to the attainable max."""
    rates = win_rates(structure.preferences, structure.behaviour)
    nu = structure.prompt_weights
    start = policy_values(structure.reference, rates, nu)[1:]
    top = attainable_max(rates, nu)[1:]
    return start + np.asarray(fractions) * (top - start)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    name=st.sampled_from(STRUCTURES),
    seed=st.integers(0, 10_000),
    n_prompts=st.sampled_from([1, 3]),
    fraction=st.floats(0.05, 0.9),
    tau=st.sampled_from([0.05, 0.2, 1.0]),
)
def test_matches_slsqp_primal(name, seed, n_prompts, fraction, tau):
    s = make_structure(name, n_responses=6, n_prompts=n_prompts, seed=seed, reference="dirichlet")
    rates = win_rates(s.preferences, s.behaviour)
    b = _thresholds_between(s, [fraction] * (s.n_objectives - 1))
    sol = solve_tabular(s.preferences, b, tau, reference=s.reference, behaviour=s.behaviour)
    lp_value, _ = lp_best_primary(rates, s.prompt_weights, b)
    if lp_value is None:  # jointly unattainable (K = 3): the solver must say so
        assert not sol.feasible
        return
    assert sol.feasible and sol.converged
    slack = policy_values(sol.policy, rates[1:], s.prompt_weights) - b
    assert np.all(slack >= -1e-8), "thresholds met"
    assert np.all(np.abs(sol.multipliers * slack) <= 1e-7 * (1 + sol.multipliers)), "complementary slackness"
    expected = primal_slsqp(rates, s.reference, s.prompt_weights, b, tau)
    ours, theirs = _objective(sol.policy, s, rates, tau), _objective(expected, s, rates, tau)
    # SLSQP may end up to 1e-9 infeasible, which can buy it up to lambda * 1e-9 of objective
    assert ours >= theirs - 1e-9 * (1 + sol.multipliers.sum()), "never worse than the general solver"
    if theirs >= ours - 1e-10:  # SLSQP converged (it can stall when tau is small): same policy
        assert np.max(np.abs(sol.policy - expected)) < 1e-5


def _objective(policy, s, rates, tau):
    kl = s.prompt_weights @ (policy * (np.log(np.maximum(policy, 1e-300)) - np.log(s.reference))).sum(axis=1)
    return policy_values(policy, rates, s.prompt_weights)[0] - tau * kl


def test_single_prompt_shapes_and_fields():
    s = make_structure("bt_conflict", n_responses=8, seed=1)
    b = _thresholds_between(s, [0.5])
    sol = solve_tabular(s.preferences[:, 0], b, 0.1)
    assert sol.policy.shape == (8,) and sol.multipliers.shape == (1,) and sol.values.shape == (2,)
    assert sol.max_attainable.shape == (1,)
    assert np.isclose(sol.policy.sum(), 1.0)
    d = sol.to_dict()
    assert {"policy", "multipliers", "values", "feasible", "max_attainable"} <= set(d)


def test_methods_agree_and_trace_is_recorded():
    s = make_structure("three_objectives", n_responses=8, n_prompts=2, seed=3)
    b = _thresholds_between(s, [0.3, 0.3])
    newton = solve_tabular(s.preferences, b, 0.2)
    lbfgs = solve_tabular(s.preferences, b, 0.2, method="lbfgsb")
    pg = solve_tabular(s.preferences, b, 0.2, method="projected_gradient", max_iter=50_000)
    assert newton.feasible and newton.converged and pg.converged
    np.testing.assert_allclose(pg.multipliers, newton.multipliers, atol=1e-6)
    np.testing.assert_allclose(lbfgs.policy, newton.policy, atol=1e-6)
    assert pg.trace.shape[1] == 2 and pg.trace.shape[0] == pg.iterations + 1
    np.testing.assert_array_equal(pg.trace[0], 0.0)


def test_threshold_below_reference_gives_zero_multiplier_and_the_plain_tilt():
    s = make_structure("bt_aligned", seed=2)
    sol = solve_tabular(s.preferences, [0.0], 0.5)
    rates = win_rates(s.preferences, s.behaviour)
    tilt = s.reference[0] * np.exp(rates[0, 0] / 0.5)
    np.testing.assert_allclose(sol.policy, (tilt / tilt.sum())[None], atol=1e-12)
    assert sol.multipliers[0] == 0.0


@pytest.mark.parametrize("excess", [1e-6, 0.01, 0.3])
def test_infeasible_threshold_reported_without_nan(excess):
    s = make_structure("bt_conflict", n_prompts=2, seed=4)
    top = attainable_max(win_rates(s.preferences, s.behaviour), s.prompt_weights)[1]
    sol = solve_tabular(s.preferences, [top + excess], 0.08)
    assert not sol.feasible
    assert np.all(np.isfinite(sol.policy)) and np.all(np.isfinite(sol.multipliers))
    np.testing.assert_allclose(sol.max_attainable, [top])
    assert sol.values[1] < top and sol.values[1] > top - 2e-3  # nearest attainable, backed off 1e-3


def test_jointly_infeasible_three_objectives_matches_lp():
    s = make_structure("three_objectives", seed=5)
    rates = win_rates(s.preferences, s.behaviour)
    top = attainable_max(rates, s.prompt_weights)[1:]
    b = top - 1e-3  # each alone attainable; together not (one aligned, one conflicting)
    assert lp_best_primary(rates, s.prompt_weights, b)[0] is None
    sol = solve_tabular(s.preferences, b, 0.1)
    assert not sol.feasible and np.all(np.isfinite(sol.multipliers))
    assert np.all(sol.effective_thresholds < b)


def test_tau_to_zero_sweep_matches_lp_front():
    from mopo_core.pareto import exact_front, hypervolume, igd_plus

    s = make_structure("bt_conflict", n_responses=8, seed=0)
    rates = win_rates(s.preferences, s.behaviour)
    ref_point = policy_values(s.reference, rates, s.prompt_weights)
    front = exact_front(rates, s.prompt_weights)
    # 100 thresholds over the part of the front that dominates the reference point
    top = front.points[front.points[:, 0] >= ref_point[0], 1].max()
    grid = np.linspace(ref_point[1], top, 100)
    sweep = sweep_thresholds(s.preferences, grid, tau=1e-3, keep_policies=False)
    assert sweep.feasible.all()
    assert np.all(sweep.values[:, 1] >= grid - 1e-8)
    ratio = hypervolume(sweep.values, ref_point) / front.hypervolume(ref_point)
    assert ratio >= 0.99
    covered = front.points[np.all(front.points >= ref_point, axis=1)]
    assert igd_plus(sweep.values, covered) < 5e-3


def test_robust_bound_matches_primal_and_eps_zero_is_plain():
    rng = np.random.default_rng(0)
    z = rng.uniform(0, 3, size=(3, 5))
    ref = rng.dirichlet(np.ones(5), size=3)
    nu = np.array([0.2, 0.3, 0.5])
    for eps in [0.01, 0.1, 0.5]:
        lb, chi = robust_lower_bound(z, ref, nu, eps)
        assert chi > 0
        assert abs(lb - robust_bound_slsqp(z, ref, nu, eps)) < 1e-6
    assert robust_lower_bound(z, ref, nu, 0.0)[0] == pytest.approx(nu @ (ref * z).sum(1))
    # a radius beyond the reachable KL: worst case is each prompt's minimum, chi = 0
    lb, chi = robust_lower_bound(z, ref, nu, 50.0)
    assert chi == 0.0 and lb == pytest.approx(nu @ z.min(1))


FEASIBILITY_CASES = [
    # (structure, M, seed, fraction of the way from pi_ref's secondary values to each one's own
    #  maximum, attainable by some policy?): the verdict is the LP's, asserted so both branches run.
    ("bt_conflict", 1, 2, 0.5, True),
    ("bt_conflict", 1, 2, 0.97, True),  # LP margin 0.006: near the edge, still attainable
    ("bt_conflict", 1, 2, 1.02, False),
    ("cyclic", 1, 3, 0.97, True),
    ("cyclic", 1, 3, 1.02, False),
    ("mixture", 1, 0, 0.9, True),
    ("multi_prompt", 3, 2, 0.97, True),
    ("multi_prompt", 3, 2, 1.02, False),
    ("three_objectives", 2, 3, 0.5, True),
    ("three_objectives", 1, 5, 0.5, False),  # each secondary attainable alone, not both together
]


@pytest.mark.parametrize("name,m,seed,fraction,attainable", FEASIBILITY_CASES)
def test_feasibility_is_decided_over_all_policies(name, m, seed, fraction, attainable):
    """solve_tabular's ``feasible`` against an LP over ALL policies (tests.reference_solvers, scipy
    HiGHS): the best worst-case slack ``max_pi min_j V_j(pi) - b_j`` is >= 0 exactly when the
    thresholds are attainable. Attainable: the solution meets them and is SLSQP's primal optimum.
    Unattainable: reported infeasible, with finite numbers."""
    tau = 0.1
    s = make_structure(name, n_responses=6, n_prompts=m, seed=seed, reference="dirichlet")
    rates, nu = rates_reference(s.preferences, s.behaviour), s.prompt_weights
    own_max = rates.max(axis=2) @ nu  # the largest value of each objective alone, by hand
    start = values_reference(s.reference, rates, nu)[1:]
    b = start + fraction * (own_max[1:] - start)
    margin, _ = best_worst_slack_lp(rates, nu, b)
    assert (margin >= 1e-3) if attainable else (margin <= -1e-3), f"the instance moved: LP margin {margin}"

    sol = solve_tabular(s.preferences, b, tau, reference=s.reference, behaviour=s.behaviour)
    np.testing.assert_allclose(sol.max_attainable, own_max[1:], atol=1e-12)
    assert np.all(np.isfinite(sol.policy)) and np.all(np.isfinite(sol.multipliers))
    values = values_reference(sol.policy, rates, nu)
    if attainable:
        assert sol.feasible, f"attainable (LP margin {margin:.4f}) but reported infeasible"
        assert np.all(values[1:] >= b - 1e-8), "thresholds met"
        expected = primal_slsqp(rates, s.reference, nu, b, tau)
        assert np.max(np.abs(sol.policy - expected)) < 1e-5, "the constrained optimum (SLSQP primal)"
    else:
        assert not sol.feasible, f"unattainable (LP margin {margin:.4f}) but reported feasible"
        assert np.any(values[1:] < b)


BAD_INPUTS = [
    (dict(preferences=np.full((2, 3, 3), 0.7)), "P \\+ P\\^T != 1"),
    (dict(preferences=np.array([[[0.5, 1.2], [-0.2, 0.5]]] * 2)), "outside \\[0, 1\\]"),
    (dict(preferences=np.array([[[0.5, np.nan], [0.5, 0.5]]] * 2)), "non-finite"),
    (dict(preferences=np.full((2, 3, 4), 0.5)), "square"),
    (dict(preferences=np.full((1, 3, 3), 0.5)), "K >= 2"),
    (dict(tau=0.0), "tau: must be > 0"),
    (dict(tau=-1.0), "tau: must be > 0"),
    (dict(eps=-0.1), "eps: must be >= 0"),
    (dict(reference=[0.5, 0.4, 0.2]), "reference: row for prompt 0 sums to"),
    (dict(behaviour=[0.5, 0.5]), "behaviour: expected shape"),
    (dict(reference=[1.2, -0.1, -0.1]), "reference: negative value"),
    (dict(thresholds=[0.5, 0.5]), "thresholds: expected 1 value"),
]


@pytest.mark.parametrize("override, message", BAD_INPUTS)
def test_bad_input_names_the_problem(override, message):
    args = dict(preferences=np.full((2, 3, 3), 0.5), thresholds=[0.5], tau=0.1)
    args.update(override)
    with pytest.raises(ValueError, match=message):
        solve_tabular(**args)


def test_reference_with_zeros_keeps_the_support_and_judges_feasibility_on_it():
    s = make_structure("bt_conflict", n_responses=5, seed=1)
    ref = np.array([0.5, 0.5, 0.0, 0.0, 0.0])
    rates = win_rates(s.preferences, s.behaviour)[:, 0]
    best_on_support = rates[1, :2].max()
    assert best_on_support < rates[1].max()  # the instance makes the point
    inside = solve_tabular(s.preferences, [best_on_support - 0.01], 0.1, reference=ref)
    assert inside.feasible and inside.values[1] >= best_on_support - 0.01 - 1e-9
    np.testing.assert_array_equal(inside.policy[0, 2:], 0.0)
    outside = solve_tabular(s.preferences, [best_on_support + 0.01], 0.1, reference=ref)
    assert not outside.feasible
    np.testing.assert_allclose(outside.max_attainable, [best_on_support])
    assert np.isfinite(outside.multipliers).all()
