"""Uncertainty of estimated answers (mopo_core/tabular/uncertainty.py) against independent answers:
Monte-Carlo over re-drawn datasets, hand-computed values, closed-form chi-square quantiles, and a
loop of single ``solve_tabular`` calls for the batched solve."""
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.stats import norm

from mopo_core.pareto import attainable_max
from mopo_core.tabular.solver import policy_values, solve_tabular, win_rates
from mopo_core.tabular.uncertainty import (
    bootstrap,
    eps_for_sample_size,
    resample_win_rates,
    solve_batched,
    solve_with_margin,
    standard_errors,
)
from synthetic import STRUCTURES, ComparisonData, estimate_preferences, make_structure, sample_comparisons


def _values(policy, counts, behaviour, nu, prior):
    """V_hat (K,) written out here: sum_m nu_m sum_ij pi_mi mu_mj P_hat_kmij."""
    return np.einsum("m,mi,mj,kmij->k", nu, policy, behaviour, estimate_preferences(counts, prior))


def _variance_and_its_mc_error(samples):
    """Sample variance (K,) of (R, K) draws and its Monte-Carlo standard error sqrt((m4 - s^4) / R)."""
    centred = samples - samples.mean(axis=0)
    var = (centred**2).mean(axis=0)
    return var, np.sqrt(((centred**4).mean(axis=0) - var**2) / samples.shape[0])


def _structure_and_policy(seed=0, behaviour="dirichlet"):
    s = make_structure("three_objectives", n_responses=5, n_prompts=2, seed=seed, reference="dirichlet",
                       behaviour=behaviour)
    policy = np.random.default_rng(seed).dirichlet(np.ones(5), size=2)
    return s, policy


# --------------------------------------------------------------------------- standard errors


def test_standard_errors_by_hand():
    """One pair compared 10 times: Var V_hat = (pi_0 mu_1 - pi_1 mu_0)^2 * n p (1 - p) / (n + prior)^2."""
    counts = np.zeros((2, 1, 2, 2))
    counts[0, 0, 0, 1], counts[0, 0, 1, 0] = 7, 3
    counts[1, 0, 0, 1], counts[1, 0, 1, 0] = 5, 5
    policy = np.array([1.0, 0.0])
    se = standard_errors(policy, counts, prior=0.0)
    assert se == pytest.approx([np.sqrt(0.25 * 0.7 * 0.3 / 10), np.sqrt(0.25 * 0.25 / 10)], rel=1e-12)
    p = 7.5 / 11  # prior 1: half a win each side
    se = standard_errors(policy, counts, prior=1.0)
    assert se[0] == pytest.approx(np.sqrt(0.25 * 10 * p * (1 - p) / 11**2), rel=1e-12)
    assert np.all(standard_errors(np.array([0.5, 0.5]), counts) == 0.0), "pi = mu: the value is 0.5 whatever P_hat is"


def test_standard_errors_match_label_redraws_on_a_fixed_design():
    """The formula with the truth plugged in (counts n_ij P_ij, prior 0) is the exact conditional
    standard deviation: compare with 3000 datasets whose pairs are fixed and labels redrawn.
    Tolerance: 4 Monte-Carlo standard errors of the sample variance."""
    s, policy = _structure_and_policy(seed=1)
    data = sample_comparisons(s, 300, seed=2)
    counts = data.win_counts()
    pair_totals = counts + np.swapaxes(counts, -1, -2)
    expected_counts = pair_totals * s.preferences  # the diagonal is fixed at 0.5 either way
    se = standard_errors(policy, expected_counts, s.behaviour, s.prompt_weights, prior=0.0)
    truth = s.preferences[:, data.prompt, data.first, data.second].T
    rng = np.random.default_rng(3)
    draws = np.array([
        _values(policy, ComparisonData(data.prompt, data.first, data.second, (rng.random(truth.shape) < truth) * 1.0,
                                       s.n_prompts, s.n_responses).win_counts(), s.behaviour, s.prompt_weights, 0.0)
        for _ in range(3000)])
    var, mc_error = _variance_and_its_mc_error(draws)
    assert np.all(np.abs(var - se**2) <= 4 * mc_error), (var, se**2, mc_error)


def test_plug_in_standard_errors_match_the_spread_over_fresh_datasets():
    """1000 fresh datasets (random design, prior 1, the estimate plugged in): the mean of SE^2
    matches the variance of V_hat across datasets, within 4 Monte-Carlo standard errors of their
    difference. Uniform behaviour, so every pair gets about 32 comparisons: the standard error is
    conditional on the design, and a pair drawn about once per dataset (a Dirichlet behaviour
    with a 0.001 entry) adds design variance it does not claim to hold. Coverage of the TRUE value
    is not tested: the prior's shrinkage is a bias, which reached 0.4 SE here for some seeds."""
    s, policy = _structure_and_policy(seed=4, behaviour="uniform")
    estimates, variances = [], []
    for seed in range(1000):
        counts = sample_comparisons(s, 400, seed=seed).win_counts()
        estimates.append(_values(policy, counts, s.behaviour, s.prompt_weights, 1.0))
        variances.append(standard_errors(policy, counts, s.behaviour) ** 2)
    var, var_error = _variance_and_its_mc_error(np.array(estimates))
    variances = np.array(variances)
    mean_error = variances.std(axis=0) / np.sqrt(len(variances))
    gap = np.abs(var - variances.mean(axis=0))
    assert np.all(gap <= 4 * np.hypot(var_error, mean_error)), (var, variances.mean(axis=0), var_error)


def test_standard_errors_refuse_bad_input():
    counts = sample_comparisons(make_structure("bt_conflict", n_responses=4), 50).win_counts()
    with pytest.raises(ValueError, match="policy"):
        standard_errors(np.ones(3) / 3, counts)
    with pytest.raises(ValueError, match="win_counts"):
        standard_errors(np.ones(4) / 4, -counts)
    with pytest.raises(ValueError, match="prior"):
        standard_errors(np.ones(4) / 4, counts, prior=-1)


# --------------------------------------------------------------------------- margin


def _halfway(s, fraction=0.5):
    rates = win_rates(s.preferences, s.behaviour)
    start = policy_values(s.reference, rates, s.prompt_weights)[1:]
    return start + fraction * (attainable_max(rates, s.prompt_weights)[1:] - start)


def test_margin_zero_is_the_plug_in_solve():
    s = make_structure("cyclic", n_responses=6, n_prompts=2, seed=5)
    counts = sample_comparisons(s, 200, seed=6).win_counts()
    b = _halfway(s)
    got = solve_with_margin(counts, b, 0.1, 0.0)
    plain = solve_tabular(estimate_preferences(counts), b, 0.1)
    assert got.rounds == 1 and got.converged and np.array_equal(got.enforced_thresholds, b)
    assert np.max(np.abs(got.solution.policy - plain.policy)) < 1e-12


@pytest.mark.parametrize("name", ["bt_conflict", "mixture", "three_objectives", "multi_prompt"])
def test_margin_is_a_fixed_point(name):
    """Enforced thresholds = b + z * SE (computed afresh at the returned policy), and met."""
    s = make_structure(name, n_responses=6, n_prompts=3, seed=7)
    counts = sample_comparisons(s, 300, seed=8).win_counts()
    b = _halfway(s, 0.15)
    got = solve_with_margin(counts, b, 0.1, 1.64, behaviour=s.behaviour)
    assert got.converged and got.solution.feasible
    se = standard_errors(got.solution.policy, counts, s.behaviour)
    assert np.allclose(got.standard_errors, se, rtol=0, atol=1e-12)
    assert np.max(np.abs(got.enforced_thresholds - (b + 1.64 * se[1:]))) <= 1e-8
    estimated = policy_values(got.solution.policy, win_rates(estimate_preferences(counts), s.behaviour),
                              s.prompt_weights)
    assert np.all(estimated[1:] >= b + 1.64 * se[1:] - 1e-8)


@pytest.mark.parametrize("name", ["bt_conflict", "cyclic"])
def test_margin_settles_on_many_datasets(name):
    """40 datasets of 100 comparisons, thresholds 30% and 70% of the way to the estimated maximum
    (most raised thresholds then lie beyond the attainable set): every solve reaches
    enforced = b + z * SE at its own policy, except where the raised threshold lands on the
    attainable maximum itself (the residual jumps across zero there; reported as not converged)."""
    s = make_structure(name, n_responses=8, seed=0)
    for seed in range(40):
        counts = sample_comparisons(s, 100, seed=seed).win_counts()
        rates = win_rates(estimate_preferences(counts), s.behaviour)
        start, top = policy_values(s.reference, rates, s.prompt_weights)[1], rates[1].max(axis=1) @ s.prompt_weights
        for fraction in (0.3, 0.7):
            b = [start + fraction * (top - start)]
            got = solve_with_margin(counts, b, 0.1, 1.64)
            se = standard_errors(got.solution.policy, counts)
            if got.converged:
                assert abs(got.enforced_thresholds[0] - (b[0] + 1.64 * se[1])) <= 1e-9
            else:
                assert abs(got.enforced_thresholds[0] - top) <= 1e-6, (seed, fraction, got)


def test_margin_refuses_a_negative_z():
    counts = sample_comparisons(make_structure("bt_conflict", n_responses=4), 50).win_counts()
    with pytest.raises(ValueError, match="z"):
        solve_with_margin(counts, [0.5], 0.1, -1.0)


# --------------------------------------------------------------------------- eps rule


def test_eps_by_hand():
    """chi2 quantiles in closed form: df 1 is a squared normal quantile, df 2 is -2 log(1 - c)."""
    assert eps_for_sample_size(100, 2, 0.95) == pytest.approx(norm.ppf(0.975) ** 2 / 200, rel=1e-12)
    assert eps_for_sample_size(50, 3, 0.95) == pytest.approx(-2 * np.log(0.05) / 100, rel=1e-12)
    assert eps_for_sample_size(100, 2, 0.95) == pytest.approx(0.0192073, abs=1e-7)


def test_eps_is_monotone():
    sizes = [eps_for_sample_size(n, 8) for n in (10, 100, 1000, 10_000)]
    responses = [eps_for_sample_size(200, n) for n in (2, 4, 8, 64)]
    levels = [eps_for_sample_size(200, 8, c) for c in (0.5, 0.9, 0.95, 0.99)]
    assert np.all(np.diff(sizes) < 0) and np.all(np.diff(responses) > 0) and np.all(np.diff(levels) > 0)


def test_eps_ball_holds_the_empirical_distribution_at_the_stated_rate():
    """4000 empirical distributions of n = 1000 draws over N = 4: KL(p_hat || p) <= eps in 95% of
    them, within 4 binomial standard errors (0.014)."""
    p = np.array([0.1, 0.2, 0.3, 0.4])
    counts = np.random.default_rng(9).multinomial(1000, p, size=4000)
    p_hat = counts / 1000
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(counts > 0, p_hat * np.log(p_hat / p), 0.0).sum(axis=1)
    rate = np.mean(kl <= eps_for_sample_size(1000, 4, 0.95))
    assert abs(rate - 0.95) <= 4 * np.sqrt(0.95 * 0.05 / 4000), rate


def test_eps_refuses_bad_input():
    for kwargs, name in (({"n_per_prompt": 0}, "n_per_prompt"), ({"n_responses": 1}, "n_responses"),
                         ({"confidence": 1.0}, "confidence")):
        with pytest.raises(ValueError, match=name):
            eps_for_sample_size(**{"n_per_prompt": 10, "n_responses": 4, **kwargs})


# --------------------------------------------------------------------------- batched solve


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    name=st.sampled_from(STRUCTURES),
    seed=st.integers(0, 10_000),
    n_prompts=st.sampled_from([1, 3]),
    n_responses=st.integers(3, 6),
    fractions=st.lists(st.floats(-0.3, 1.3), min_size=6, max_size=6),
    tau=st.sampled_from([0.05, 0.2, 1.0]),
)
def test_batched_equals_a_loop_of_single_solves(name, seed, n_prompts, n_responses, fractions, tau):
    """Three instances (different preferences, shared reference), thresholds from below the
    reference's values to beyond the attainable maxima (infeasible)."""
    structures = [make_structure(name, n_responses=n_responses, n_prompts=n_prompts, seed=seed + i,
                                 reference="dirichlet", behaviour="dirichlet") for i in range(3)]
    ref, nu = structures[0].reference, structures[0].prompt_weights
    j = structures[0].n_objectives - 1
    rates = np.stack([win_rates(s.preferences, s.behaviour) for s in structures])
    start = np.einsum("m,mn,bjmn->bj", nu, ref, rates[:, 1:])
    top = rates[:, 1:].max(axis=3) @ nu
    b = start + np.reshape(fractions[: 3 * j], (3, j)) * (top - start)
    policies, lam, feasible = solve_batched(rates, b, tau, ref, nu)
    for i, s in enumerate(structures):
        single = solve_tabular(s.preferences, b[i], tau, reference=ref, behaviour=s.behaviour)
        assert feasible[i] == single.feasible
        assert np.max(np.abs(policies[i] - single.policy)) < 1e-8
        assert np.allclose(lam[i], single.multipliers, rtol=1e-6, atol=1e-8)


def _three_instances(name="three_objectives"):
    structures = [make_structure(name, n_responses=5, n_prompts=2, seed=i, reference="dirichlet") for i in range(3)]
    return structures, np.stack([win_rates(s.preferences, s.behaviour) for s in structures])


def test_batched_falls_back_to_the_single_solver_when_newton_stops_early(monkeypatch):
    """With one Newton iteration allowed, no instance converges in the batch: each is re-solved by
    solve_family and still equals solve_tabular."""
    from mopo_core.tabular import uncertainty

    monkeypatch.setattr(uncertainty, "NEWTON_MAX_ITER", 1)
    structures, rates = _three_instances()
    b = np.array([0.55, 0.55])
    policies, _, feasible = solve_batched(rates, b, 0.1, structures[0].reference)
    for i, s in enumerate(structures):
        single = solve_tabular(s.preferences, b, 0.1, reference=structures[0].reference, behaviour=s.behaviour)
        assert feasible[i] == single.feasible and np.max(np.abs(policies[i] - single.policy)) < 1e-8


def test_batched_reports_a_threshold_that_needs_a_capped_multiplier():
    """tau = 1e9 needs multipliers beyond MAX_MULTIPLIER: infeasible, as solve_tabular says."""
    structures, rates = _three_instances("bt_conflict")
    b = np.einsum("m,mn,bmn->b", structures[0].prompt_weights, structures[0].reference, rates[:, 1])[:, None] + 0.05
    policies, _, feasible = solve_batched(rates, b, 1e9, structures[0].reference)
    for i, s in enumerate(structures):
        single = solve_tabular(s.preferences, b[i], 1e9, reference=structures[0].reference, behaviour=s.behaviour)
        assert not single.feasible and not feasible[i]
        assert np.max(np.abs(policies[i] - single.policy)) < 1e-8


def test_batched_shares_one_threshold_vector_and_refuses_bad_shapes():
    s = make_structure("bt_conflict", n_responses=5, n_prompts=2)
    rates = np.stack([win_rates(s.preferences, s.behaviour)] * 2)
    shared = solve_batched(rates, [0.6], 0.1)[0]
    assert np.array_equal(shared, solve_batched(rates, [[0.6], [0.6]], 0.1)[0])
    with pytest.raises(ValueError, match="thresholds"):
        solve_batched(rates, [[0.6], [0.6], [0.6]], 0.1)
    with pytest.raises(ValueError, match="rates"):
        solve_batched(rates[0], [0.6], 0.1)
    with pytest.raises(ValueError, match="tau"):
        solve_batched(rates, [0.6], 0.0)


# --------------------------------------------------------------------------- bootstrap


def _setup(name="bt_conflict", n_prompts=2, n=150, z=0.0, seed=0, n_resamples=40):
    s = make_structure(name, n_responses=5, n_prompts=n_prompts, seed=seed)
    data = sample_comparisons(s, n, seed=seed + 1)
    b = _halfway(s)
    return s, data, b, bootstrap(data, b, 0.1, n_resamples=n_resamples, seed=seed, behaviour=s.behaviour, z=z)


def test_bootstrap_is_reproducible_and_in_range():
    s, data, b, first = _setup()
    again = bootstrap(data, b, 0.1, n_resamples=40, seed=0, behaviour=s.behaviour)
    other = bootstrap(data, b, 0.1, n_resamples=40, seed=1, behaviour=s.behaviour)
    assert np.array_equal(first.indices, again.indices) and np.array_equal(first.values, again.values)
    assert not np.array_equal(first.indices, other.indices)
    assert first.values.shape == (40, 2) and first.policies.shape == (40, 2, 5) and first.feasible.shape == (40,)
    assert first.prob_meet.shape == (1,) and np.all((first.prob_meet >= 0) & (first.prob_meet <= 1))
    lo, hi = first.interval(0.95)
    lo50, hi50 = first.interval(0.5)
    assert np.all(lo <= lo50) and np.all(lo50 <= hi50) and np.all(hi50 <= hi)
    with pytest.raises(ValueError, match="level"):
        first.interval(1.5)


def test_each_resample_is_a_within_prompt_resample_solved_exactly():
    """Rebuild a few resamples from their indices and solve them one at a time; the values are the
    resample's policy on the full sample's estimated win-rates."""
    s, data, b, result = _setup(name="three_objectives", n_prompts=3)
    full = win_rates(estimate_preferences(data.win_counts()), s.behaviour)
    for r in (0, 17, 39):
        idx = result.indices[r]
        assert np.array_equal(np.sort(data.prompt[idx]), np.sort(data.prompt))
        counts = ComparisonData(data.prompt[idx], data.first[idx], data.second[idx], data.labels[idx],
                                data.n_prompts, data.n_responses).win_counts()
        single = solve_tabular(estimate_preferences(counts), b, 0.1, behaviour=s.behaviour)
        assert np.max(np.abs(result.policies[r] - single.policy)) < 1e-8
        assert result.feasible[r] == single.feasible
        assert np.allclose(result.values[r], policy_values(single.policy, full, s.prompt_weights), atol=1e-10)


def test_bootstrap_margin_meets_each_resamples_raised_threshold():
    s, data, b, result = _setup(z=1.0)
    assert result.z == 1.0 and result.point.z == 1.0 and result.converged.all()
    for r in (0, 9, 21):
        idx = result.indices[r]
        counts = ComparisonData(data.prompt[idx], data.first[idx], data.second[idx], data.labels[idx],
                                data.n_prompts, data.n_responses).win_counts()
        se = standard_errors(result.policies[r], counts, s.behaviour)
        estimated = policy_values(result.policies[r], win_rates(estimate_preferences(counts), s.behaviour),
                                  s.prompt_weights)
        if result.feasible[r]:
            assert np.all(estimated[1:] >= b + se[1:] - 1e-7)


def test_a_dataset_that_every_resample_reproduces():
    """Each prompt's comparisons are identical, so a within-prompt resample is the data itself:
    every resample gives the full-sample answer (a resample mixing prompts would not)."""
    prompt = np.repeat([0, 1], 30)
    first, second = np.repeat([0, 1], 30), np.repeat([1, 2], 30)
    labels = np.repeat([[1.0, 0.0], [0.0, 1.0]], 30, axis=0)
    data = SimpleNamespace(prompt=prompt, first=first, second=second, labels=labels, n_prompts=2, n_responses=3)
    result = bootstrap(data, [0.55], 0.2, n_resamples=25, seed=3)
    point = result.point.solution
    assert np.allclose(result.policies, point.policy[None], atol=1e-12)
    assert np.allclose(result.values, point.values[None], atol=1e-12)
    assert result.prob_meet[0] == float(point.values[1] >= 0.55 - 1e-8)


def test_resample_win_rates_and_bootstrap_refuse_bad_input():
    s = make_structure("bt_conflict", n_responses=4)
    data = sample_comparisons(s, 30)
    indices, rates = resample_win_rates(data, n_resamples=3, seed=1)
    assert indices.shape == (3, 30) and rates.shape == (3, 2, 1, 4)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap(data, [0.5], 0.1, n_resamples=0)
    with pytest.raises(ValueError, match="comparisons"):
        bootstrap(object(), [0.5], 0.1)
