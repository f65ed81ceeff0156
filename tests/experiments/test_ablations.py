"""Threshold sweeps and ablations (mopo_core.experiments.ablations) against independent answers.

Independent answers: the LP optimum at each threshold (scipy HiGHS through ``lp_best_primary``)
and a hand-written 2-D staircase hypervolume, ``solve_tabular`` / ``run_algorithm1`` called
directly, win-rates recomputed from freshly sampled comparisons, and the run store read back.
"""
import math

import numpy as np
import pandas as pd
import pytest

from mopo_core import run_algorithm1, solve_tabular
from mopo_core.experiments.ablations import (
    DEFAULT_VALUES,
    METRIC_COLUMNS,
    PARAMETERS,
    ablation,
    exact_reference,
    save_run,
    threshold_sweep,
    value_label,
)
from mopo_core.tabular.algorithm1 import Algorithm1Config
from mopo_core.pareto import lp_best_primary
from mopo_core.runs import RunStore
from mopo_core.tabular.solver import win_rates
from synthetic import estimate_preferences, make_structure, sample_comparisons
from tests.reference_solvers import rates_reference, values_reference


def _staircase_hv(points, ref):
    """Area dominated by 2-D points (maximised) above ``ref``: a plain sweep, no library."""
    pts = np.asarray([p for p in points if p[0] > ref[0] and p[1] > ref[1]])
    if len(pts) == 0:
        return 0.0
    pts = pts[np.argsort(-pts[:, 0])]  # by primary, descending
    area, best_y = 0.0, ref[1]
    for x, y in pts:
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area


@pytest.fixture(scope="module")
def conflict():
    return exact_reference("bt_conflict")


# --------------------------------------------------------------------------- threshold sweep


def test_sweep_points_are_true_values_of_the_exact_solver(conflict):
    out = threshold_sweep("bt_conflict", tau=0.05, n_thresholds=11, exact=conflict)
    s = make_structure("bt_conflict")
    pts = out.points
    assert len(pts) == 11 and {"b1", "V0", "V1", "lambda1", "feasible", "kl", "met", "regret"} <= set(pts.columns)
    for row in pts.iloc[[0, 5, 10]].itertuples():
        sol = solve_tabular(s.preferences, [row.b1], 0.05, reference=s.reference, behaviour=s.behaviour)
        np.testing.assert_allclose([row.V0, row.V1], sol.values, atol=1e-9)
        assert row.lambda1 == pytest.approx(sol.multipliers[0], abs=1e-6)
        assert row.kl == pytest.approx(sol.kl, abs=1e-9)
    # the grid runs from the reference policy's secondary value to 95% of the attainable maximum
    assert pts.b1.iloc[0] == pytest.approx(conflict.reference_point[1])
    top = win_rates(s.preferences, s.behaviour)[1].max()
    assert pts.b1.iloc[-1] == pytest.approx(pts.b1.iloc[0] + 0.95 * (top - pts.b1.iloc[0]))


def test_hv_ratio_tends_to_the_lp_staircase_as_tau_shrinks(conflict):
    ratios = {tau: threshold_sweep("bt_conflict", tau=tau, exact=conflict).metrics["hv_ratio"]
              for tau in (1.0, 0.1, 0.01, 0.001)}
    assert ratios[1.0] < ratios[0.1] < ratios[0.01] <= ratios[0.001] + 1e-9
    assert ratios[0.001] > 0.97
    # independent answer: the LP optimum at each of the same thresholds, hypervolume by hand
    out = threshold_sweep("bt_conflict", tau=0.001, exact=conflict)
    lp_points = [lp_best_primary(conflict.rates, conflict.prompt_weights, [b])[1] for b in out.points.b1]
    hv_lp = _staircase_hv(lp_points, conflict.reference_point)
    assert out.metrics["hypervolume"] == pytest.approx(hv_lp, rel=1e-3)
    assert out.metrics["hypervolume"] == pytest.approx(_staircase_hv(out.points[["V0", "V1"]].values,
                                                                     conflict.reference_point), rel=1e-9)


@pytest.mark.parametrize("name,m", [("bt_conflict", 1), ("cyclic", 1), ("deterministic", 1), ("multi_prompt", 3)])
def test_exact_preferences_meet_every_threshold_with_lp_regret_near_zero(name, m):
    out = threshold_sweep(name, n_prompts=m, tau=0.001, n_thresholds=21)
    assert out.metrics["satisfaction"] == 1.0 and out.metrics["max_violation"] < 1e-9
    assert out.metrics["mean_regret"] < 2e-3
    assert out.metrics["gap_to_oracle"] == 0.0 and out.metrics["winrate_error"] == 0.0
    exact = exact_reference(name, n_prompts=m)
    for row in out.points.iloc[::5].itertuples():
        lp = lp_best_primary(exact.rates, exact.prompt_weights, [row.b1])[0]
        assert row.lp_V0 == pytest.approx(lp, abs=1e-9)
        assert row.regret == pytest.approx(lp - row.V0)


def test_three_objectives_sweep_is_a_product_grid():
    out = threshold_sweep("three_objectives", tau=0.01, n_thresholds=16)
    pts = out.points
    assert len(pts) == 16 and pts.b1.nunique() == 4 and pts.b2.nunique() == 4
    assert {"V2", "lambda2", "b2_end"} <= set(pts.columns)
    attainable = pts.lp_V0.notna()
    assert pts.loc[attainable, "met"].all() and out.metrics["satisfaction"] == 1.0
    # jointly unattainable corners are reported infeasible, never NaN
    assert not pts.loc[~attainable, "feasible"].any()
    assert np.isfinite(pts[["V0", "V1", "V2"]].values).all()


def test_sweep_on_sampled_comparisons_scores_on_true_preferences(conflict):
    """Fitted on an estimate from 50 comparisons (seed 0), scored on the truth. Independent answer:
    the same comparisons drawn, estimated, turned into win-rates and solved here (solve_tabular per
    threshold on the estimate and on the truth), values and both metrics computed by hand."""
    out = threshold_sweep("bt_conflict", tau=0.01, n_thresholds=11, n_comparisons=50, exact=conflict)
    s = make_structure("bt_conflict")
    kw = dict(reference=s.reference, behaviour=s.behaviour, prompt_weights=s.prompt_weights)
    true_rates = rates_reference(s.preferences, s.behaviour)
    estimate = estimate_preferences(sample_comparisons(s, 50, seed=0).win_counts())
    estimated_rates = rates_reference(estimate, s.behaviour)
    assert out.metrics["winrate_error"] == pytest.approx(np.mean(np.abs(estimated_rates - true_rates)), abs=1e-15)

    gaps, moved = [], []
    for row, policy in zip(out.points.itertuples(), out.policies):
        fitted = solve_tabular(estimate, [row.b1], 0.01, **kw)
        np.testing.assert_allclose(policy, fitted.policy, atol=1e-9)  # fitted on the estimate, not the truth
        true_values = values_reference(fitted.policy, true_rates, s.prompt_weights)
        np.testing.assert_allclose([row.V0, row.V1], true_values, atol=1e-9)  # reported on the truth
        moved.append(np.max(np.abs(true_values - values_reference(fitted.policy, estimated_rates, s.prompt_weights))))
        oracle = solve_tabular(s.preferences, [row.b1], 0.01, **kw)
        gaps.append(np.max(np.abs(true_values - values_reference(oracle.policy, true_rates, s.prompt_weights))))
    # The instance tells the two apart: estimated and true values of the same policy differ.
    assert max(moved) > 0.01
    assert out.metrics["gap_to_oracle"] == pytest.approx(np.mean(gaps), abs=1e-9)


# --------------------------------------------------------------------------- ablations


def test_tau_ablation_rows_match_the_sweep(conflict):
    table = ablation("bt_conflict", "tau", [0.1, 0.01], n_thresholds=11, exact=conflict).table
    assert list(table.columns[:4]) == ["structure", "parameter", "value", "label"]
    assert list(table.label) == ["τ=0.1", "τ=0.01"]
    for row in table.itertuples():
        sweep = threshold_sweep("bt_conflict", tau=row.value, n_thresholds=11, exact=conflict).metrics
        for column in METRIC_COLUMNS:
            assert getattr(row, column) == pytest.approx(sweep[column], nan_ok=True)


def test_n_ablation_error_shrinks_as_n_grows(conflict):
    out = ablation("bt_conflict", "n", [10, 100, 1000, 10000, None], n_thresholds=11, exact=conflict)
    err = out.table.winrate_error.values
    assert np.all(np.diff(err[:4]) < 0) and err[3] < 0.02 and err[4] == 0.0
    assert out.table.gap_to_oracle.values[3] < out.table.gap_to_oracle.values[0]
    assert out.table.label.iloc[-1] == "n=∞ (exact)" and math.isnan(out.table.value.iloc[-1])
    # independent: the same comparisons, estimated and turned into win-rates here
    s = make_structure("bt_conflict")
    est = estimate_preferences(sample_comparisons(s, 100, seed=0).win_counts())
    expected = np.mean(np.abs(win_rates(est, s.behaviour) - win_rates(s.preferences, s.behaviour)))
    assert err[1] == pytest.approx(expected)


def test_eps_ablation_feasible_points_meet_their_thresholds_on_true_values(conflict):
    out = ablation("bt_conflict", "eps", [0.0, 0.001, 0.05], n_thresholds=6, exact=conflict)
    share = out.table.feasible_share.values
    assert share[0] == 1.0 and share[0] >= share[1] >= share[2]
    feasible = out.points[out.points.feasible]
    assert feasible.met.all()  # the robust bound is below the nominal value
    assert out.table.gap_to_oracle.iloc[0] == 0.0 and out.table.gap_to_oracle.iloc[2] > 0


@pytest.mark.parametrize("parameter,values,kw", [("t0", [1, None], {}), ("beta", [0.9, 0.999], {"t0": 50})])
def test_algorithm1_ablations_have_one_row_per_value(conflict, parameter, values, kw):
    out = ablation("bt_conflict", parameter, values, n_thresholds=3, steps=400, exact=conflict, **kw)
    assert out.table.shape == (2, 4 + len(METRIC_COLUMNS))
    assert list(out.table.parameter) == [parameter] * 2
    assert len(out.points) == 2 * 3 and set(out.points.method) == {"mopo_alg1"}
    assert (out.points.b1_end >= out.points.b1 - 1e-12).all()  # the ratchet never lowers a threshold
    assert out.policies.shape == (6, 1, 8)
    assert out.config["method"] == "algorithm1" and out.config["steps"] == 400


def test_algorithm1_row_equals_a_direct_run(conflict):
    out = ablation("bt_conflict", "t0", [None], n_thresholds=3, steps=1500, exact=conflict)
    s = make_structure("bt_conflict")
    row = out.points.iloc[1]
    res = run_algorithm1(s.preferences, [row.b1], 0.01, s.reference, s.behaviour,
                         config=Algorithm1Config(steps=1500, log_every=1500))
    np.testing.assert_allclose([row.V0, row.V1], res.values, atol=1e-12)
    # without a lagged reference Algorithm 1 approaches the exact solution
    assert out.table.gap_to_oracle.iloc[0] < 1e-3


def test_beta_ratchet_raises_inactive_thresholds():
    # bt_aligned: at the lowest thresholds the constraint is slack, so beta * V_lag lifts b
    out = ablation("bt_aligned", "beta", [0.999], n_thresholds=3, steps=400, t0=50)
    assert (out.points.b1_end > out.points.b1 + 1e-3).any()


def test_bad_arguments_raise_value_errors_naming_them(conflict):
    with pytest.raises(ValueError, match="parameter: unknown 'gamma'"):
        ablation("bt_conflict", "gamma", [1.0], exact=conflict)
    with pytest.raises(ValueError, match=r"values\[1\]"):
        ablation("bt_conflict", "tau", [0.1, -1.0], exact=conflict)
    with pytest.raises(ValueError, match=r"values\[0\]: beta must lie in \(0, 1\]"):
        ablation("bt_conflict", "beta", [1.5], t0=10, exact=conflict)
    with pytest.raises(ValueError, match="t0: the beta ablation needs"):
        ablation("bt_conflict", "beta", [0.9], exact=conflict)
    with pytest.raises(ValueError, match=r"values\[0\]: must be >= 1, got 0"):
        ablation("bt_conflict", "n", [0], exact=conflict)
    with pytest.raises(ValueError, match="values: need at least one"):
        ablation("bt_conflict", "eps", [], exact=conflict)
    with pytest.raises(ValueError, match="n_thresholds"):
        threshold_sweep("bt_conflict", n_thresholds=0, exact=conflict)
    with pytest.raises(ValueError, match="tau"):
        threshold_sweep("bt_conflict", tau=0.0, exact=conflict)
    with pytest.raises(ValueError, match=r"exact: built for \(structure, N, M, seed\) = \('bt_conflict', 8, 1, 0\)"):
        threshold_sweep("cyclic", exact=conflict)
    with pytest.raises(ValueError, match="name: unknown structure"):
        threshold_sweep("nope")


def test_defaults_and_labels():
    assert set(DEFAULT_VALUES) == set(PARAMETERS)
    assert value_label("t0", None) == "t0=∞ (off)" and value_label("beta", None) == "β=off"
    assert value_label("eps", 0.05) == "ε=0.05"


# --------------------------------------------------------------------------- run store


def test_save_run_records_sweeps_and_ablations(tmp_path, conflict):
    store = RunStore(tmp_path / "runs.sqlite")
    sweep = threshold_sweep("bt_conflict", tau=0.01, n_thresholds=5, exact=conflict)
    run_id = save_run(store, sweep)
    run = store.get_run(run_id)
    assert (run.kind, run.status) == ("sweep", "finished")
    assert run.config["structure"] == "bt_conflict" and run.config["tau"] == 0.01
    assert run.name == "sweep on bt_conflict (τ=0.01, ε=0)"
    assert len(run.points) == 5 and set(run.points.label) == {"mopo"}
    np.testing.assert_allclose(run.points[["v0", "v1"]].values, sweep.points[["V0", "V1"]].values)
    assert run.points.params.iloc[2]["threshold"] == [pytest.approx(sweep.points.b1.iloc[2])]
    logged = run.metrics.set_index("name").value
    assert logged["hv_ratio"] == pytest.approx(sweep.metrics["hv_ratio"])

    abl = ablation("bt_conflict", "t0", [10, None], n_thresholds=2, steps=100, exact=conflict)
    run = store.get_run(save_run(store, abl))
    assert run.kind == "ablation" and len(run.points) == 4
    assert list(run.points.label) == ["mopo_alg1 t0=10"] * 2 + ["mopo_alg1 t0=∞ (off)"] * 2
    assert run.points.params.iloc[3]["t0"] is None and run.points.params.iloc[0]["t0"] == 10
    assert run.config["t0"] == "ablated" and run.config["values"] == [10, None]
    assert run.name == "ablation over t0 on bt_conflict (τ=0.01, ε=0)"
    sat = run.metrics[run.metrics.name == "satisfaction"].sort_values("step").value.values
    np.testing.assert_allclose(sat, abl.table.satisfaction.values)
    assert list(store.list_runs().kind) == ["sweep", "ablation"]
    with pytest.raises(ValueError, match="outcome"):
        save_run(store, pd.DataFrame())
