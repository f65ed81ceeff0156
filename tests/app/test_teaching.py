"""The Learn page's engine helpers against independent answers (hand computations, the
Newton solver, the SLSQP primal)."""
import numpy as np
import pytest

from mopo_core import solve_tabular
from mopo_core.tabular.solver import TabularProblem
from app.presenters.learn import (
    CAPABILITIES,
    QUESTIONS,
    VERDICTS,
    capabilities,
    capability_summary,
    default_step_size,
    dual_path,
    tau_effect,
    tilt_table,
    tilt_values,
)
from synthetic import make_structure
from tests.reference_solvers import primal_slsqp


@pytest.fixture(scope="module")
def instance():
    """bt_conflict, N = 6, with a non-uniform reference and a different behaviour policy, so
    that pi_ref and mu both matter in the hand computations."""
    return make_structure("bt_conflict", n_responses=6, seed=3, reference="dirichlet", behaviour="dirichlet")


def _hand_rates(s):
    """w_k(y) = sum_y' mu(y') P_k(y beats y'), one prompt, by explicit loops."""
    prefs, mu = s.preferences[:, 0], s.behaviour[0]
    k, n, _ = prefs.shape
    return np.array([[sum(mu[j] * prefs[kk, i, j] for j in range(n)) for i in range(n)] for kk in range(k)])


def _hand_tilt(s, lam, tau):
    w = _hand_rates(s)
    score = w[0] + lam * w[1]
    weights = s.reference[0] * np.exp(score / tau)
    return weights / weights.sum(), w


def _midway_threshold(s, fraction=0.5):
    w = _hand_rates(s)
    start = s.reference[0] @ w[1]
    return start + fraction * (w[1].max() - start)


@pytest.mark.parametrize("lam, tau", [(0.0, 0.08), (1.3, 0.08), (4.0, 0.5), (0.7, 0.02)])
def test_tilt_table_matches_a_hand_computation(instance, lam, tau):
    table = tilt_table(instance.preferences, lam, tau, reference=instance.reference, behaviour=instance.behaviour)
    expected, w = _hand_tilt(instance, lam, tau)
    assert list(table.columns) == ["response", "reference", "w_0", "w_1", "score", "tilted"]
    np.testing.assert_allclose(table["reference"], instance.reference[0], atol=1e-15)
    np.testing.assert_allclose(table["w_0"], w[0], atol=1e-12)
    np.testing.assert_allclose(table["w_1"], w[1], atol=1e-12)
    np.testing.assert_allclose(table["score"], w[0] + lam * w[1], atol=1e-12)
    np.testing.assert_allclose(table["tilted"], expected, rtol=1e-9, atol=1e-15)
    assert table["tilted"].sum() == pytest.approx(1.0, abs=1e-12)


def test_tilt_table_picks_the_prompt():
    s = make_structure("multi_prompt", n_responses=4, n_prompts=3, seed=1)
    for m in range(3):
        table = tilt_table(s.preferences, 0.5, 0.1, reference=s.reference, behaviour=s.behaviour, prompt=m)
        w = np.einsum("kij,j->ki", s.preferences[:, m], s.behaviour[m])
        expected = s.reference[m] * np.exp((w[0] + 0.5 * w[1]) / 0.1)
        np.testing.assert_allclose(table["tilted"], expected / expected.sum(), rtol=1e-9)
    with pytest.raises(ValueError, match="prompt"):
        tilt_table(s.preferences, 0.5, 0.1, prompt=3)


def test_tilt_values_trace_the_family(instance):
    kw = dict(reference=instance.reference, behaviour=instance.behaviour)
    curve = tilt_values(instance.preferences, [0.0, 0.5, 2.0, 50.0], 0.08, **kw)
    for lam, row in zip(curve["lambda"], curve.itertuples()):
        pi, w = _hand_tilt(instance, lam, 0.08)
        assert row.V_primary == pytest.approx(pi @ w[0], abs=1e-12)
        assert row.V_secondary == pytest.approx(pi @ w[1], abs=1e-12)
        assert row.kl == pytest.approx(float(pi @ np.log(pi / instance.reference[0])), abs=1e-10)
    # raising lambda raises the secondary value (d V_1 / d lambda = Var_pi[w_1] / tau >= 0)
    assert np.all(np.diff(curve["V_secondary"]) > 0)


@pytest.mark.parametrize("tau, fraction", [(0.08, 0.5), (0.2, 0.3), (0.05, 0.8)])
def test_dual_path_converges_to_the_solver_multiplier(instance, tau, fraction):
    kw = dict(reference=instance.reference, behaviour=instance.behaviour)
    b = _midway_threshold(instance, fraction)
    path = dual_path(instance.preferences, b, tau, n_steps=400, **kw)
    exact = solve_tabular(instance.preferences, [b], tau, **kw)  # Newton, a different code path
    assert list(path.columns) == ["step", "lambda", "V_primary", "V_secondary", "threshold", "slack", "dual", "kl"]
    assert len(path) == 401 and list(path["step"]) == list(range(401))
    assert path["lambda"].iloc[0] == 0.0
    assert path["lambda"].iloc[-1] == pytest.approx(exact.multipliers[0], rel=1e-6)
    assert path.attrs["lambda_star"] == pytest.approx(exact.multipliers[0], rel=1e-9)
    assert path["V_secondary"].iloc[-1] == pytest.approx(b, abs=1e-7)  # the constraint is active
    # the dual decreases towards the primal optimum (strong duality): g(lambda*) = V_0 - tau KL
    assert path["dual"].iloc[-1] == pytest.approx(exact.objective, abs=1e-8)
    assert np.all(np.diff(path["dual"]) <= 1e-12)


def test_dual_path_steps_follow_the_papers_update(instance):
    """Each row is lambda <- max(0, lambda - eta (V_1(pi_lambda) - b)), with V_1 from a hand tilt."""
    kw = dict(reference=instance.reference, behaviour=instance.behaviour)
    b, tau, eta = _midway_threshold(instance), 0.08, 0.9
    path = dual_path(instance.preferences, b, tau, step_size=eta, n_steps=12, **kw)
    for t in range(12):
        lam = path["lambda"].iloc[t]
        pi, w = _hand_tilt(instance, lam, tau)
        assert path["V_secondary"].iloc[t] == pytest.approx(pi @ w[1], abs=1e-12)
        assert path["slack"].iloc[t] == pytest.approx(pi @ w[1] - b, abs=1e-12)
        assert path["lambda"].iloc[t + 1] == pytest.approx(max(0.0, lam - eta * (pi @ w[1] - b)), abs=1e-12)
    assert path.attrs["step_size"] == eta


def test_dual_path_default_step_and_fixed_points(instance):
    kw = dict(reference=instance.reference, behaviour=instance.behaviour)
    eta = default_step_size(instance.preferences, 0.08, **kw)
    w = _hand_rates(instance)
    assert eta == pytest.approx(4 * 0.08 / np.ptp(w[1]) ** 2)
    # a threshold the unconstrained tilt already meets: lambda stays at 0 for every step
    path = dual_path(instance.preferences, w[1].min(), 0.08, n_steps=5, **kw)
    assert len(path) == 6 and (path["lambda"] == 0).all() and (path["slack"] >= 0).all()


def test_dual_path_unattainable_threshold_is_reported_not_diverging(instance):
    top = _hand_rates(instance)[1].max()
    path = dual_path(instance.preferences, top + 0.05, 0.08, n_steps=50, reference=instance.reference,
                     behaviour=instance.behaviour)
    assert not path.attrs["feasible"] and path.attrs["requested_threshold"] == pytest.approx(top + 0.05)
    assert (path["threshold"] < top).all()
    assert np.isfinite(path.drop(columns="step").to_numpy()).all()


def test_tau_effect_matches_the_primal_and_kl_falls_as_tau_grows(instance):
    kw = dict(reference=instance.reference, behaviour=instance.behaviour)
    b = _midway_threshold(instance)
    taus = np.geomspace(0.01, 2.0, 9)
    table = tau_effect(instance.preferences, b, taus, **kw)
    assert list(table["tau"]) == pytest.approx(list(taus))
    assert table["feasible"].all()
    assert np.all(np.diff(table["kl"]) < 0)
    assert np.all(np.diff(table["V_primary"]) <= 1e-12)
    np.testing.assert_allclose(table["slack"], 0.0, atol=1e-7)  # active at every tau on bt_conflict
    # independent ground truth at two KL strengths: SLSQP on the primal
    w = _hand_rates(instance)[:, None, :]
    for i in (2, 6):
        pi = primal_slsqp(w, instance.reference, np.ones(1), np.array([b]), taus[i])
        v = np.einsum("mn,kmn->k", pi, w)
        assert table["V_primary"].iloc[i] == pytest.approx(v[0], abs=1e-5)
        assert table["V_secondary"].iloc[i] == pytest.approx(v[1], abs=1e-5)


def test_inputs_are_checked(instance):
    three = make_structure("three_objectives", n_responses=4, seed=0)
    with pytest.raises(ValueError, match="K = 2"):
        dual_path(three.preferences, [0.5], 0.1)
    with pytest.raises(ValueError, match="tau"):
        tilt_table(instance.preferences, 1.0, 0.0)
    with pytest.raises(ValueError, match="lam"):
        tilt_table(instance.preferences, -1.0, 0.1)
    with pytest.raises(ValueError, match="n_steps"):
        dual_path(instance.preferences, 0.5, 0.1, n_steps=0)
    with pytest.raises(ValueError, match="taus"):
        tau_effect(instance.preferences, 0.5, [0.1, -1.0])
    problem = TabularProblem.build(instance.preferences)
    with pytest.raises(ValueError, match="reference"):
        tilt_table(problem, 1.0, 0.1, reference=instance.reference)
    # a built problem and the raw arrays give the same table
    same = tilt_table(problem, 1.0, 0.1)
    np.testing.assert_allclose(same["tilted"], tilt_table(instance.preferences, 1.0, 0.1)["tilted"])


def test_capability_table_is_complete():
    table = capabilities()
    assert list(table.columns) == ["Method", *QUESTIONS]
    assert len(table) == 8 and table["Method"].is_unique
    for name in ("MOPO", "DPO", "IPO", "MODPO", "Scalarised IPO", "Rewarded Soups", "Safe-RLHF", "RiC"):
        assert table["Method"].str.contains(name, regex=False).any(), name
    cells = table.to_numpy().ravel()
    assert all(isinstance(c, str) and c.strip() for c in cells)  # no empty cell
    # the answers the method's definition fixes
    mopo = table.set_index("Method").loc["MOPO (this project)"]
    assert mopo["Needs a reward model?"].startswith("No")
    assert mopo["Meets a user threshold?"].startswith("Yes")
    assert mopo["Works with intransitive preferences?"].startswith("Yes")
    table.loc[0, "Method"] = "changed"
    assert CAPABILITIES.loc[0, "Method"] != "changed"  # a copy


def test_capability_summary_is_the_verdicts_of_the_full_table():
    summary, full = capability_summary(), capabilities()
    assert summary.shape == full.shape and list(summary.columns) == list(full.columns)
    assert list(summary["Method"]) == list(full["Method"])
    for q in QUESTIONS:
        assert set(summary[q]) <= set(VERDICTS)
        for verdict, answer in zip(summary[q], full[q]):
            assert answer.startswith(f"{verdict}: ") and len(answer) > len(verdict) + 10
    by_method = summary.set_index("Method")
    # where the families differ by construction (MOPO.md section 7, mopo_core.tabular.baselines)
    assert by_method.loc["MOPO (this project)"].tolist() == ["No", "No", "Yes", "Yes", "Yes"]
    assert by_method.loc["DPO (primary only)", "Works with intransitive preferences?"] == "No"
    assert by_method.loc["Scalarised IPO", "Works with intransitive preferences?"] == "Yes"
    assert by_method.loc["MODPO / weighted DPO", "Needs a reward model?"] == "Yes"
