"""Algorithm 1 (mopo_core.tabular.algorithm1) against independent answers.

Reference answers: the exact tabular solver (``solve_tabular``, projected Newton on the dual),
thresholds built from a chosen multiplier (``b = V_sec(pi_lam_true)`` with the tilt written out in
``tests.reference_solvers``, whose solution has multipliers ``lam_true`` by the KKT conditions),
MOPO-LB's fixed point by nested brentq, its residual in slack units from the barrier's definition,
its policy by the tilt written out and its primary value by an SLSQP primal (all in
``tests.reference_solvers``, sharing no code with mopo_core), and hand-derived bookkeeping for
lagged references and ratchets.
Everything runs on N = 6 responses and a few thousand tabular steps (well under a second each).
"""
import numpy as np
import pytest

from mopo_core import solve_tabular
from mopo_core.tabular.algorithm1 import Algorithm1Config, barrier_multiplier, barrier_slack, run_algorithm1
from mopo_core.tabular.solver import TiltFamily, policy_values, win_rates
from synthetic import estimate_preferences, make_structure, sample_comparisons
from tests.reference_solvers import (
    barrier_fixed_point_nested,
    barrier_residual_reference,
    primal_slsqp,
    rates_reference,
    tilt_policy_reference,
    values_reference,
)

TAU = 0.2
N = 6


def _structure(name, n_prompts=1, seed=1, reference="uniform"):
    return make_structure(name, n_responses=N, n_prompts=n_prompts, seed=seed, reference=reference)


def _family(preferences, s, tau=TAU):
    """The closed-form family pi_lam of ``preferences`` with the structure's reference and behaviour."""
    rates = win_rates(np.asarray(preferences).reshape(-1, s.n_prompts, N, N), s.behaviour)
    return rates, TiltFamily(rates[0], rates[1:], s.reference, s.prompt_weights, tau)


def _true_rates(s):
    """The structure's win-rates (K, M, N), written out in tests.reference_solvers (not mopo_core's)."""
    return rates_reference(np.asarray(s.preferences).reshape(-1, s.n_prompts, N, N), s.behaviour)


def _thresholds_for(s, lam_true, tau=TAU):
    """Thresholds whose exact solution has multipliers ``lam_true`` (all constraints active):
    ``V_sec`` of the tilt at ``lam_true``, both written out in tests.reference_solvers."""
    rates = _true_rates(s)
    return values_reference(tilt_policy_reference(lam_true, rates, s.reference, tau), rates, s.prompt_weights)[1:]


def _kw(s):
    return dict(reference=s.reference, behaviour=s.behaviour, prompt_weights=s.prompt_weights)


def _as_2d(policy):
    return np.atleast_2d(policy)


# --------------------------------------------------------------------------- exact win-rates


EXACT_CASES = [
    # (structure, M, reference, lam_true, steps)
    ("bt_conflict", 1, "uniform", [2.0], 2000),
    ("bt_conflict", 1, "dirichlet", [0.8], 2000),
    ("cyclic", 1, "uniform", [1.5], 2000),
    ("cyclic", 1, "dirichlet", [3.0], 3000),
    ("three_objectives", 1, "uniform", [0.7, 1.5], 6000),
    ("multi_prompt", 3, "uniform", [1.2], 2000),
    ("multi_prompt", 3, "dirichlet", [2.5], 3000),
]


@pytest.mark.parametrize("name,m,reference,lam_true,steps", EXACT_CASES)
def test_exact_rates_converge_to_solve_tabular(name, m, reference, lam_true, steps):
    s = _structure(name, m, reference=reference)
    b = _thresholds_for(s, lam_true)
    exact = solve_tabular(s.preferences, b, TAU, **_kw(s))
    assert exact.feasible and exact.converged
    np.testing.assert_allclose(exact.multipliers, lam_true, atol=1e-6)  # KKT sanity of the reference answer

    res = run_algorithm1(s.preferences, b, TAU, **_kw(s), config=Algorithm1Config(steps=steps, log_every=steps))
    assert res.policy.shape == exact.policy.shape
    assert np.max(np.abs(res.policy - exact.policy)) < 1e-6
    np.testing.assert_allclose(res.multipliers, exact.multipliers, atol=1e-5)
    np.testing.assert_allclose(res.values, exact.values, atol=1e-6)
    np.testing.assert_allclose(res.thresholds, b)  # no ratchet: thresholds untouched
    assert res.chi is None


def test_inactive_constraint_keeps_multiplier_zero():
    """A threshold below what the unconstrained tilt already reaches: lam stays 0, policy = pi_0."""
    s = _structure("bt_conflict")
    rates, fam = _family(s.preferences, s)
    b = policy_values(fam.policy(np.zeros(1)), rates[1:], s.prompt_weights) - 0.05
    exact = solve_tabular(s.preferences, b, TAU, **_kw(s))
    res = run_algorithm1(s.preferences, b, TAU, **_kw(s), config=Algorithm1Config(steps=1000, log_every=100))
    assert exact.multipliers[0] == 0.0
    assert np.all(res.history["lambda"] == 0.0)
    assert np.max(np.abs(res.policy - exact.policy)) < 1e-6


# --------------------------------------------------------------------------- estimated win-rates


def _estimated(s, n, seed):
    data = sample_comparisons(s, n, seed=seed)
    return estimate_preferences(data.win_counts())


def test_estimated_preferences_converge_to_solve_tabular_on_the_same_estimate():
    s = _structure("bt_conflict", n_prompts=2, seed=3)
    b = _thresholds_for(s, [1.5])
    prefs = _estimated(s, 20_000, seed=0)
    est = solve_tabular(prefs, b, TAU, **_kw(s))
    assert est.feasible and est.converged
    res = run_algorithm1(prefs, b, TAU, **_kw(s), config=Algorithm1Config(steps=2000, log_every=2000))
    assert np.max(np.abs(res.policy - est.policy)) < 1e-6
    np.testing.assert_allclose(res.multipliers, est.multipliers, atol=1e-5)


def test_estimated_solution_approaches_exact_one_as_data_grows():
    """Mean (over 3 data seeds) error of Algorithm 1 on estimated preferences shrinks with n.

    Sampling error scales like 1/sqrt(n): a factor 100 in n should cut it ~10x; we ask for 2x.
    """
    s = _structure("bt_conflict", n_prompts=2, seed=3)
    b = _thresholds_for(s, [1.5])
    exact = solve_tabular(s.preferences, b, TAU, **_kw(s))
    cfg = Algorithm1Config(steps=2000, log_every=2000)
    policy_err, lam_err = {}, {}
    for n in (200, 20_000):
        pe, le = [], []
        for seed in range(3):
            prefs = _estimated(s, n, seed)
            assert solve_tabular(prefs, b, TAU, **_kw(s)).feasible
            res = run_algorithm1(prefs, b, TAU, **_kw(s), config=cfg)
            pe.append(np.max(np.abs(res.policy - exact.policy)))
            le.append(abs(res.multipliers[0] - exact.multipliers[0]))
        policy_err[n], lam_err[n] = np.mean(pe), np.mean(le)
    assert policy_err[20_000] < 0.5 * policy_err[200]
    assert lam_err[20_000] < 0.5 * lam_err[200]
    assert policy_err[20_000] < 0.05


# --------------------------------------------------------------------------- MOPO-LB


def _barrier_residual(s, res, b, sigma, delta):
    """The fixed-point residual ``V_j(pi_lam) - b_j - slack(lam_j)`` in slack (win-rate) units,
    with the tilt, the values and the slack all written out in tests.reference_solvers."""
    return barrier_residual_reference(res.multipliers, _true_rates(s), s.reference, s.prompt_weights, b, TAU,
                                      sigma, delta)


def _check_barrier_fixed_point(s, res, b, sigma, delta, converged=True):
    """MOPO-LB's multipliers equal the nested-brentq fixed point and solve its residual, and
    (``converged``: after enough steps) the learned policy is the tilt at them, all independent
    of mopo_core; the reported values are the learned policy's. Returns the nested multipliers
    and the true rates."""
    rates = _true_rates(s)
    expected = barrier_fixed_point_nested(rates, s.reference, s.prompt_weights, b, TAU, sigma, delta)
    np.testing.assert_allclose(res.multipliers, expected, rtol=1e-8)
    np.testing.assert_allclose(_barrier_residual(s, res, b, sigma, delta), 0.0, atol=1e-10)
    if converged:
        assert np.max(np.abs(_as_2d(res.policy) - tilt_policy_reference(expected, rates, s.reference, TAU))) < 1e-6
    np.testing.assert_allclose(res.values, values_reference(res.policy, rates, s.prompt_weights), atol=1e-12)
    return expected, rates


@pytest.mark.parametrize(
    "name,m,lam_true,sigma,delta",
    [
        ("bt_conflict", 1, [0.5], 1e-3, 1e-3),  # feasible side: lam = sigma / slack
        ("bt_conflict", 1, [2.5], 1e-3, 1e-3),  # quadratic extension: slack slightly negative
        ("cyclic", 1, [1.5], 1e-3, 1e-3),
        ("multi_prompt", 3, [2.0], 1e-3, 1e-3),
        ("cyclic", 1, [2.5], 1e-4, 1e-4),
    ],
)
def test_log_barrier_meets_threshold_and_is_close_to_lagrangian(name, m, lam_true, sigma, delta):
    s = _structure(name, m)
    b = _thresholds_for(s, lam_true)
    cfg = Algorithm1Config(steps=1000, log_every=100, variant="log_barrier", barrier_sigma=sigma, barrier_delta=delta)
    res = run_algorithm1(s.preferences, b, TAU, **_kw(s), config=cfg)
    # The barrier fixed point lam = barrier_multiplier(V(pi_lam) - b), solved independently; the learned policy is pi_lam.
    _, rates = _check_barrier_fixed_point(s, res, b, sigma, delta)
    values = values_reference(res.policy, rates, s.prompt_weights)
    assert np.all(values[1:] - b >= -delta), "threshold met up to barrier_delta"
    # Close to the constrained optimum (SLSQP in the primal, not the dual solver the code shares).
    lagrangian = values_reference(primal_slsqp(rates, s.reference, s.prompt_weights, b, TAU), rates, s.prompt_weights)
    assert abs(values[0] - lagrangian[0]) < 5e-3
    # Multipliers are recomputed only when the reference changes: constant over the run.
    assert np.all(res.history["lambda"] == res.multipliers)


def test_log_barrier_violation_is_bounded_by_the_extension_slope():
    """On the infeasible side the barrier multiplier is sigma (2 delta - s) / delta^2 and (J = 1)
    V_sec is increasing in lam, so lam_LB <= lam* and slack >= 2 delta - lam* delta^2 / sigma.
    With the default sigma = delta this is (2 - lam*) delta: a large lam* violates by many deltas."""
    s = _structure("bt_conflict")
    sigma = delta = 1e-3
    b = _thresholds_for(s, [10.0])
    res = run_algorithm1(s.preferences, b, TAU, **_kw(s), config=Algorithm1Config(steps=50, variant="log_barrier"))
    expected, rates = _check_barrier_fixed_point(s, res, b, sigma, delta, converged=False)
    slack = values_reference(tilt_policy_reference(expected, rates, s.reference, TAU), rates, s.prompt_weights)[1:] - b
    assert res.multipliers[0] <= 10.0
    assert slack[0] < 0, "the threshold is violated: the multiplier is on the quadratic extension"
    assert slack[0] >= 2 * delta - 10.0 * delta**2 / sigma - 1e-12


@pytest.mark.parametrize("m,lam_true", [(1, [0.7, 1.5]), (1, [3.0, 0.2]), (3, [0.7, 1.5]), (3, [2.0, 2.0])])
def test_log_barrier_fixed_point_three_objectives(m, lam_true):
    """The coupled J = 2 fixed point, on the instance that failed on other CPUs (scipy root's xtol)."""
    s = _structure("three_objectives", m)
    b = _thresholds_for(s, lam_true)
    res = run_algorithm1(s.preferences, b, TAU, **_kw(s), config=Algorithm1Config(steps=50, variant="log_barrier"))
    _check_barrier_fixed_point(s, res, b, 1e-3, 1e-3, converged=False)  # 50 steps: pi_psi is still moving


def test_barrier_multiplier_is_continuous_and_decreasing():
    sigma, delta = 1e-3, 1e-3
    s = np.array([-0.5, -1e-3, 0.0, delta - 1e-12, delta, delta + 1e-12, 0.01, 0.5])
    lam = barrier_multiplier(s, sigma, delta)
    assert np.all(np.diff(lam) < 0)
    np.testing.assert_allclose(lam[4], sigma / delta)
    np.testing.assert_allclose(lam[3], lam[5], rtol=1e-8)  # C^1 barrier at the switch
    np.testing.assert_allclose(lam[-1], sigma / 0.5)
    np.testing.assert_allclose(lam[0], sigma * (2 * delta + 0.5) / delta**2)


def test_barrier_slack_inverts_the_barrier_multiplier():
    sigma, delta = 1e-3, 1e-2
    # Hand values: the switch, the zero slack of the extension (multiplier 2 sigma / delta), far sides.
    lam = np.array([sigma / delta, 2 * sigma / delta, sigma / 0.5, sigma * (2 * delta + 0.5) / delta**2])
    np.testing.assert_allclose(barrier_slack(lam, sigma, delta), [delta, 0.0, 0.5, -0.5], atol=1e-15)
    slack = np.array([-3.0, -0.2, 0.0, delta / 2, delta, 0.3, 7.0])
    np.testing.assert_allclose(barrier_slack(barrier_multiplier(slack, sigma, delta), sigma, delta), slack,
                               rtol=1e-13, atol=1e-15)


# --------------------------------------------------------------------------- lagged reference, ratchet


def test_lagged_reference_improves_primary_and_keeps_constraint():
    for name, m in (("bt_conflict", 1), ("cyclic", 1), ("multi_prompt", 3)):
        s = _structure(name, m)
        b = _thresholds_for(s, [1.5])
        steps, t0, log_every = 1000, 100, 10
        plain = run_algorithm1(s.preferences, b, TAU, **_kw(s), config=Algorithm1Config(steps=steps, log_every=log_every))
        lagged = run_algorithm1(
            s.preferences, b, TAU, **_kw(s), config=Algorithm1Config(steps=steps, t0=t0, log_every=log_every)
        )
        assert lagged.values[0] >= plain.values[0] - 1e-6, name
        assert np.all(lagged.values[1:] >= b - 1e-3), name
        # Moving the reference lets the policy move further from the original pi_ref.
        assert lagged.history["kl"][-1] > plain.history["kl"][-1]

        h, t = lagged.history, steps // log_every
        assert h["step"].shape == (t,) and np.array_equal(h["step"], np.arange(log_every, steps + 1, log_every))
        assert h["lambda"].shape == (t, 1) and h["thresholds"].shape == (t, 1)
        assert h["values"].shape == (t, 2)
        for key in ("kl", "ess", "loss"):
            assert h[key].shape == (t,)
        np.testing.assert_allclose(h["thresholds"], np.broadcast_to(b, (t, 1)))  # no beta: fixed
        assert np.all(np.isfinite(h["loss"])) and np.all((h["ess"] > 0) & (h["ess"] <= 1 + 1e-12))


def test_history_length_when_steps_not_a_multiple_of_log_every():
    s = _structure("bt_conflict")
    b = _thresholds_for(s, [1.0])
    res = run_algorithm1(s.preferences, b, TAU, **_kw(s), config=Algorithm1Config(steps=95, log_every=10))
    assert list(res.history["step"]) == [10, 20, 30, 40, 50, 60, 70, 80, 90, 95]
    assert res.history["lambda"].shape == (10, 1)
    np.testing.assert_allclose(res.history["values"][-1], res.values, atol=1e-2)  # logged before the last step


def test_ratcheting_thresholds_follow_lagged_values_and_never_drop_below_user():
    """b_t = max(b_user, beta * V_sec reached t0 steps earlier), recorded in history["thresholds"].

    The user threshold sits far below what the policy reaches, so the ratchet binds."""
    s = _structure("bt_conflict")
    rates, fam = _family(s.preferences, s)
    b_user = policy_values(s.reference, rates[1:], s.prompt_weights) - 0.2
    t0, beta, steps = 50, 0.97, 600
    cfg = Algorithm1Config(steps=steps, t0=t0, beta=beta, log_every=10)
    res = run_algorithm1(s.preferences, b_user, TAU, **_kw(s), config=cfg)
    h = res.history
    thr = h["thresholds"][:, 0]
    assert np.all(thr >= b_user[0])
    assert thr.max() > b_user[0] + 0.05, "ratchet must actually bind here"
    np.testing.assert_allclose(res.thresholds, thr[-1])
    step = h["step"]
    for k in range(2, steps // t0 + 1):
        i = np.flatnonzero(step == k * t0)[0]
        prev = np.flatnonzero(step == (k - 1) * t0)[0]
        # logged values at a snapshot step are exactly the snapshot's values
        expected = max(b_user[0], beta * h["values"][prev, 1])
        np.testing.assert_allclose(thr[i], expected, rtol=1e-12)
        # in force until the next refresh
        np.testing.assert_allclose(thr[i : i + t0 // 10], expected, rtol=1e-12)
    assert np.all(thr[step < 2 * t0] == b_user[0])
    # With the ratchet the secondary value stays far above the user threshold; without it, it falls.
    free = run_algorithm1(s.preferences, b_user, TAU, **_kw(s), config=Algorithm1Config(steps=steps, t0=t0, log_every=10))
    assert res.values[1] > free.values[1]
    assert np.all(free.history["thresholds"] == b_user[0])


# --------------------------------------------------------------------------- robust eps > 0


@pytest.mark.parametrize("name,m,eps", [("bt_conflict", 1, 0.05), ("cyclic", 1, 0.1), ("multi_prompt", 3, 0.05)])
def test_robust_multipliers_match_the_paper_tilt_fixed_point(name, m, eps):
    # Algorithm 1 keeps the policy in the plain tilt family, so with eps > 0 it converges to the
    # paper's fixed point (robust_form="paper_tilt"), not to the exact robust optimum.
    # Thresholds must lie below the peak of the robust bound over the tilt family: LB(pi_lam) is not
    # monotone in lam (a sharper tilt is more fragile). Beyond that peak the tilt solve reports
    # feasible=False, while the paper's update (Algorithm 1) keeps raising lam without bound.
    s = _structure(name, m)
    kw = dict(_kw(s), eps=eps)
    tilt = dict(kw, robust_form="paper_tilt")
    at_zero = solve_tabular(s.preferences, -1.0, TAU, **tilt)  # lam = 0: the unconstrained tilt
    peak = solve_tabular(s.preferences, 1.0, TAU, **tilt)  # unattainable: returns the most robust tilt
    assert at_zero.multipliers[0] == 0.0 and not peak.feasible
    b = 0.5 * (at_zero.robust_values[0] + peak.robust_values[0])
    exact = solve_tabular(s.preferences, b, TAU, **tilt)
    assert exact.feasible and 0 < exact.multipliers[0] < peak.multipliers[0]
    np.testing.assert_allclose(exact.robust_values, b, atol=1e-8)

    res = run_algorithm1(s.preferences, b, TAU, **kw, config=Algorithm1Config(steps=2000, log_every=2000))
    np.testing.assert_allclose(res.multipliers, exact.multipliers, atol=1e-4)
    np.testing.assert_allclose(res.chi, exact.chi, rtol=1e-4)
    assert np.max(np.abs(_as_2d(res.policy) - _as_2d(exact.policy))) < 1e-5


def test_log_barrier_with_eps_is_refused():
    # MOPO-LB has no robust form here: asking for one must not silently ignore eps.
    s = _structure("bt_conflict")
    with pytest.raises(ValueError, match="^variant"):
        run_algorithm1(s.preferences, 0.34, TAU, eps=0.1, **_kw(s), config=Algorithm1Config(steps=3, variant="log_barrier"))


# --------------------------------------------------------------------------- callback


def test_callback_metrics():
    s = _structure("bt_conflict")
    b = _thresholds_for(s, [1.5])
    calls = []
    cfg = Algorithm1Config(steps=205, log_every=20, t0=50)
    res = run_algorithm1(s.preferences, b, TAU, **_kw(s), config=cfg, callback=lambda t, m: calls.append((t, m)))
    steps = [t for t, _ in calls]
    assert steps == list(range(20, 201, 20)) + [205]
    assert np.array_equal(res.history["step"], steps)
    for i, (_, metrics) in enumerate(calls):
        assert {"lambda_1", "value_0", "value_1", "kl", "ess", "loss"} <= set(metrics)
        assert "chi_1" not in metrics
        assert all(isinstance(v, float) for v in metrics.values())
        assert 0.0 < metrics["ess"] <= 1.0 + 1e-12
        assert metrics["kl"] >= 0.0
        assert metrics["lambda_1"] == res.history["lambda"][i, 0]
        assert metrics["value_0"] == res.history["values"][i, 0]
        assert metrics["loss"] == res.history["loss"][i]
    assert calls[-1][1]["ess"] < 1.0  # the tilt is not the reference
    # robust runs also report chi
    got = []
    run_algorithm1(s.preferences, 0.3, TAU, **_kw(s), eps=0.05, config=Algorithm1Config(steps=10, log_every=5),
                   callback=lambda t, m: got.append(m))
    assert len(got) == 2 and all("chi_1" in m and m["chi_1"] > 0 for m in got)


def test_ess_is_one_when_target_is_reference():
    """Identical primary scores and an inactive constraint: rho = 1 everywhere, ESS = 1."""
    prefs = np.full((2, N, N), 0.5)
    seen = []
    run_algorithm1(prefs, 0.0, TAU, config=Algorithm1Config(steps=3, log_every=1), callback=lambda t, m: seen.append(m))
    assert [m["ess"] for m in seen] == pytest.approx([1.0] * 3)
    assert [m["kl"] for m in seen] == pytest.approx([0.0] * 3, abs=1e-15)


# --------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(steps=0), "steps"),
        (dict(steps=-3), "steps"),
        (dict(variant="barrier"), "variant"),
        (dict(variant="Lagrangian"), "variant"),
        (dict(beta=0.9), "beta"),
        (dict(t0=10, beta=1.5), "beta"),
        (dict(t0=10, beta=0.0), "beta"),
        (dict(t0=0), "t0"),
        (dict(lambda_lr=-0.1), "lambda_lr"),
        (dict(lambda_lr=0.0), "lambda_lr"),
        (dict(chi_lr=-1.0), "chi_lr"),
        (dict(barrier_sigma=0.0), "barrier_sigma"),
        (dict(barrier_delta=-1e-3), "barrier_delta"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        Algorithm1Config(**kwargs).validate()
    s = _structure("bt_conflict")
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        run_algorithm1(s.preferences, 0.5, TAU, config=Algorithm1Config(**kwargs))


@pytest.mark.parametrize("kwargs,field", [(dict(steps=2.5), "steps"), (dict(log_every=0), "log_every")])
def test_config_validation_unchecked_fields(kwargs, field):
    s = _structure("bt_conflict")
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        run_algorithm1(s.preferences, 0.5, TAU, config=Algorithm1Config(**{"steps": 10, **kwargs}))


def test_invalid_problem_arguments_raise():
    s = _structure("bt_conflict")
    with pytest.raises(ValueError, match="^tau"):
        run_algorithm1(s.preferences, 0.5, 0.0, config=Algorithm1Config(steps=1))
    with pytest.raises(ValueError, match="^eps"):
        run_algorithm1(s.preferences, 0.5, TAU, eps=-0.1, config=Algorithm1Config(steps=1))
    with pytest.raises(ValueError, match="^thresholds"):
        run_algorithm1(s.preferences, [0.5, 0.5], TAU, config=Algorithm1Config(steps=1))
