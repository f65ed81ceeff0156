"""The suite's comparison protocol: grid points chosen on estimates, the same-KL temperature,
seeds, and the intervals over seeds; each against an answer computed here independently."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.optimize import brentq

from mopo_core.experiments.suite import (
    KL_MATCH_TAU_BOUNDS,
    MET_TOL,
    SuiteConfig,
    choose_grid_points,
    comparison_data,
    exact_answers,
    match_kl_temperature,
    mean_ci,
    paired_differences,
    results_table,
    run_structure,
    run_suite,
)
from mopo_core.tabular.baselines import scalarised_ipo, weight_grid
from synthetic import estimate_preferences, make_structure, sample_comparisons


def _brute_force_choice(estimated, thresholds):
    """Loop version of the rule: best estimated primary among points meeting b on estimates, else
    the smallest largest shortfall, ties to the larger primary."""
    out = []
    for b in thresholds:
        shortfalls = [max(b[j] - v[j + 1] for j in range(len(b))) for v in estimated]
        ok = [g for g, s in enumerate(shortfalls) if s <= MET_TOL]
        pool = ok or [g for g, s in enumerate(shortfalls) if s <= min(shortfalls)]
        out.append(max(pool, key=lambda g: (estimated[g][0], -g)))
    return np.array(out)


def _values(policy, rates):
    """V_k of a one-prompt policy (N,) or (1, N) on rates (K, 1, N)."""
    return np.array([float(np.sum(np.ravel(policy) * rates[k, 0])) for k in range(rates.shape[0])])


def _kl(policy, reference):
    p, r = np.ravel(policy), np.ravel(reference)
    return float(np.sum(p * np.log(p / r)))


def test_choose_grid_points_by_hand_and_against_a_loop():
    estimated = np.array([[0.9, 0.2], [0.6, 0.5], [0.3, 0.8]])
    assert choose_grid_points(estimated, np.array([[0.1], [0.4], [0.7], [0.9]])).tolist() == [0, 1, 2, 2]
    # nobody meets 0.9; both fall 0.3 short: the larger estimated primary wins
    assert choose_grid_points(np.array([[0.5, 0.6], [0.7, 0.6]]), np.array([[0.9]])).tolist() == [1]
    rng = np.random.default_rng(0)
    for k in (2, 3):
        estimated = np.round(rng.random((9, k)), 1)  # rounded: ties happen
        thresholds = np.round(rng.random((20, k - 1)), 1)
        np.testing.assert_array_equal(choose_grid_points(estimated, thresholds),
                                      _brute_force_choice(estimated, thresholds))
    with pytest.raises(ValueError, match="thresholds: expected shape"):
        choose_grid_points(estimated, np.zeros((2, 5)))
    with pytest.raises(ValueError, match="estimated: expected shape"):
        choose_grid_points(np.zeros(3), np.zeros((2, 1)))


def test_weight_grids_answer_from_estimates_and_are_scored_on_the_truth():
    # bt_conflict, seed 2, 20 comparisons: a grid point chosen on the estimates misses thresholds that
    # another grid point meets on the truth (so the truth was not used to choose)
    seed, steps = 2, 300
    config = SuiteConfig(structures=("bt_conflict",), methods=("scalarised_ipo",), n_comparisons=20, steps=steps,
                         n_thresholds=5, n_weights=5, n_seeds=1, temperatures=("same_tau",))
    result = run_structure("bt_conflict", config, seed)
    s = make_structure("bt_conflict", seed=seed)
    counts = sample_comparisons(s, 20, seed=seed).win_counts()
    mu = s.behaviour[0]
    est_rates = (estimate_preferences(counts)[:, :, :, :] @ mu)  # (K, 1, N): sum_j P[i, j] mu_j
    true_rates = s.preferences @ mu
    out = scalarised_ipo(counts, s.reference, config.tau, weights=weight_grid(2, 5), steps=steps)
    estimated = np.array([_values(p, est_rates) for p in out.policies])
    truth = np.array([_values(p, true_rates) for p in out.policies])
    grid = result.thresholds
    chosen = _brute_force_choice(estimated, grid)
    assert [p["grid_index"] for p in result.parameters["scalarised_ipo"]] == chosen.tolist()
    np.testing.assert_allclose(result.points["scalarised_ipo"], truth[chosen], atol=1e-12)
    met = truth[chosen, 1] >= grid[:, 0] - MET_TOL
    best_on_truth = [(truth[:, 1] >= b - MET_TOL).any() for b in grid[:, 0]]
    assert result.metrics["scalarised_ipo"]["satisfaction"] == pytest.approx(met.mean())
    assert met.mean() < np.mean(best_on_truth)


def test_match_kl_temperature_recovers_a_closed_form_temperature():
    # threshold 0 never binds, so MOPO's policy is pi_ref exp(w_0 / tau) / Z: its KL in closed form
    s = make_structure("bt_conflict", seed=0)
    w0, ref = (s.preferences[0] @ s.behaviour[0])[0], s.reference[0]

    def closed_form_kl(tau):
        p = ref * np.exp((w0 - w0.max()) / tau)
        return _kl(p / p.sum(), ref)

    target = closed_form_kl(0.05)
    assert brentq(lambda t: closed_form_kl(t) - target, 0.01, 1.0) == pytest.approx(0.05)
    config = SuiteConfig(n_comparisons=None, tau=0.01)
    grid, data = np.array([[0.0]]), comparison_data(s, None)
    tau = match_kl_temperature("mopo", s, grid, config, data, target)
    assert tau == pytest.approx(0.05, rel=2e-3)
    # beyond the reachable KLs (ln 8 is the most there is): the nearest KL reached
    tau = match_kl_temperature("mopo", s, grid, config, data, np.log(8) + 1)
    assert closed_form_kl(tau) == pytest.approx(np.log(8), abs=1e-6)
    assert match_kl_temperature("mopo", s, grid, config, data, 0.0) == pytest.approx(KL_MATCH_TAU_BOUNDS[1])
    with pytest.raises(ValueError, match="target_kl"):
        match_kl_temperature("mopo", s, grid, config, data, -1.0)
    with pytest.raises(ValueError, match="method: unknown"):
        match_kl_temperature("sft", s, grid, config, data, 1.0)


def test_same_kl_rows_match_mopos_kl_and_say_so():
    config = SuiteConfig(structures=("bt_conflict",), methods=("mopo", "scalarised_ipo", "reward_lagrangian"),
                         n_comparisons=None, steps=300, n_thresholds=4, n_weights=4, n_seeds=1)
    table = results_table([run_structure("bt_conflict", config, 0)]).set_index(["method", "temperature"])
    s = make_structure("bt_conflict", seed=0)
    target = table.loc[("mopo", "same_tau"), "output_kl"]
    for method in ("scalarised_ipo", "reward_lagrangian"):
        row = table.loc[(method, "same_kl")]
        assert row.tau != config.tau
        assert row.output_kl == pytest.approx(target, abs=5e-3)
    # the scalarised IPO grid retrained here at the tau found has that KL
    tau = table.loc[("scalarised_ipo", "same_kl"), "tau"]
    out = scalarised_ipo(comparison_data(s, None)[0], s.reference, tau, weights=weight_grid(2, 4), steps=300)
    assert np.mean([_kl(p, s.reference) for p in out.policies]) == pytest.approx(target, abs=5e-3)
    assert table.loc[("scalarised_ipo", "same_tau"), "tau"] == config.tau


def test_seeds_build_their_own_structures_and_data():
    config = SuiteConfig(structures=("cyclic",), methods=("mopo",), n_comparisons=50, seed=3, n_seeds=2,
                         temperatures=("same_tau",))
    results = run_suite(config)
    assert [r.seed for r in results] == [3, 4] == list(config.seeds)
    for r in results:
        np.testing.assert_allclose(r.thresholds, exact_answers(make_structure("cyclic", seed=r.seed)).thresholds(11))
    assert not np.allclose(results[0].thresholds, results[1].thresholds)


def test_mean_ci_is_the_student_t_interval():
    x = np.array([0.3, 0.5, 0.4, np.nan, 0.9])
    mean, half, n = mean_ci(x)
    finite = x[np.isfinite(x)]
    low, high = stats.t.interval(0.95, len(finite) - 1, loc=finite.mean(), scale=stats.sem(finite))
    assert (mean, n) == (pytest.approx(finite.mean()), 4) and half == pytest.approx((high - low) / 2)
    assert mean_ci([0.2])[0] == 0.2 and np.isnan(mean_ci([0.2])[1])
    assert mean_ci([np.nan])[2] == 0
    with pytest.raises(ValueError, match="confidence"):
        mean_ci(x, confidence=1.5)


def test_paired_differences_pair_by_seed():
    rows = []
    mopo = {0: (1.0, 0.10), 1: (0.8, np.nan), 2: (0.9, 0.05)}
    other = {2: (0.5, 0.20), 0: (0.7, 0.15), 1: (0.8, 0.30)}  # listed out of seed order
    for method, values in (("mopo", mopo), ("b", other)):
        for seed, (sat, regret) in values.items():
            rows.append({"structure": "s", "seed": seed, "method": method, "temperature": "same_tau",
                         "satisfaction": sat, "mean_regret": regret, "hv_ratio": sat, "mean_kl": 1.0,
                         "output_kl": 1.0})
    paired = paired_differences(pd.DataFrame(rows)).set_index("metric")
    diff = np.array([1.0 - 0.7, 0.8 - 0.8, 0.9 - 0.5])
    low, high = stats.t.interval(0.95, 2, loc=diff.mean(), scale=stats.sem(diff))
    sat = paired.loc["satisfaction"]
    assert sat["baseline"] == "b" and sat["n"] == 3 and sat["positive"] == 2
    assert sat["mean"] == pytest.approx(diff.mean()) and sat["ci"] == pytest.approx((high - low) / 2)
    regret = paired.loc["mean_regret"]  # seed 1: mopo met nothing, so that pair drops out
    assert regret["n"] == 2 and regret["mean"] == pytest.approx(((0.10 - 0.15) + (0.05 - 0.20)) / 2)
