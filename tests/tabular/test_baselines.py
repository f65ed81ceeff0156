"""Baselines against independent answers: closed-form population optima, the exact tabular
solver, and plain-numpy re-statements of the losses.

Adam with a constant learning rate does not settle exactly: after reaching machine precision it
shows bursts of ~1e-3 in the policy. The tight (1e-4) checks therefore pass a damped
``AdamConfig`` (a larger ``eps``); the defaults are checked at the burst level.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy.special import expit

from mopo_core.tabular import baselines
from mopo_core.tabular.optim import AdamConfig
from mopo_core.tabular.solver import solve_scores

STABLE_IPO = AdamConfig(eps=1e-2)
STABLE_DPO = AdamConfig(lr=0.1, eps=1e-3)
STABLE_MODPO = AdamConfig(eps=1e-2)


@dataclass
class Instance:
    """Exact BT data: rewards (K, M, N), preferences (K, M, N, N), behaviour mu and reference
    (M, N), counts W = 2 mu_i mu_j P (per-prompt total 1) and win-rates w = P mu (K, M, N)."""

    rewards: np.ndarray
    prefs: np.ndarray
    mu: np.ndarray
    ref: np.ndarray
    counts: np.ndarray
    rates: np.ndarray


def exact_instance(prefs: np.ndarray, mu: np.ndarray, ref: np.ndarray, rewards=None) -> Instance:
    counts = 2.0 * mu[None, :, :, None] * mu[None, :, None, :] * prefs
    rates = np.einsum("kmij,mj->kmi", prefs, mu)
    return Instance(rewards, prefs, mu, ref, counts, rates)


def bt_instance(seed: int, k: int = 2, m: int = 3, n: int = 6, scale: float = 1.0) -> Instance:
    rng = np.random.default_rng(seed)
    rewards = scale * rng.normal(size=(k, m, n))
    prefs = expit(rewards[..., :, None] - rewards[..., None, :])
    mu = rng.dirichlet(5.0 * np.ones(n), size=m)
    ref = rng.dirichlet(5.0 * np.ones(n), size=m)
    return exact_instance(prefs, mu, ref, rewards)


def deterministic_instance(n: int = 6) -> Instance:
    """One prompt, strict order 0 > 1 > ... on the primary, the reverse on the secondary."""
    order = np.arange(n)
    p0 = (order[:, None] < order[None, :]).astype(float) + 0.5 * np.eye(n)
    prefs = np.stack([p0, p0.T])[:, None]
    uniform = np.full((1, n), 1.0 / n)
    return exact_instance(prefs, uniform, uniform)


def tilt(ref: np.ndarray, score: np.ndarray, tau: float) -> np.ndarray:
    """pi ∝ pi_ref exp(score / tau) per prompt (last axis)."""
    logits = np.log(ref) + score / tau
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------- weight grid


def test_weight_grid_two_objectives_is_linspace():
    a = np.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(baselines.weight_grid(2), np.column_stack([1 - a, a]), atol=1e-15)
    assert baselines.weight_grid(2, 5).shape == (5, 2)


def test_weight_grid_three_objectives_covers_simplex():
    grid = baselines.weight_grid(3)
    assert grid.shape == (15, 3)  # d = 4: the smallest resolution with >= 11 points
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)
    assert (grid >= 0).all() and len({tuple(r) for r in grid}) == 15
    np.testing.assert_allclose(grid * 4, np.round(grid * 4), atol=1e-12)
    assert grid[0].tolist() == [1.0, 0.0, 0.0]
    for vertex in np.eye(3):
        assert any(np.array_equal(row, vertex) for row in grid)


# ---------------------------------------------------------------------------- BT fit


def test_fit_bt_rewards_recovers_rewards_from_exact_counts():
    inst = bt_instance(0, scale=1.5)
    fitted = baselines.fit_bt_rewards(inst.counts, l2=1e-10)
    np.testing.assert_allclose(fitted, centred(inst.rewards), atol=1e-5)
    # Only frequencies matter: n comparisons with the same frequencies give the same fit.
    np.testing.assert_allclose(baselines.fit_bt_rewards(250.0 * inst.counts), baselines.fit_bt_rewards(inst.counts), atol=1e-7)


def test_fit_bt_rewards_is_finite_on_deterministic_data_and_zero_without_data():
    inst = deterministic_instance()
    counts = np.concatenate([inst.counts, np.zeros_like(inst.counts)], axis=1)  # prompt 1: no data
    fitted = baselines.fit_bt_rewards(counts)
    assert np.isfinite(fitted).all()
    assert (np.diff(fitted[0, 0]) < 0).all() and (np.diff(fitted[1, 0]) > 0).all()
    np.testing.assert_allclose(fitted.mean(axis=-1), 0.0, atol=1e-9)
    np.testing.assert_allclose(fitted[:, 1], 0.0, atol=1e-12)


# ---------------------------------------------------------------------------- IPO family


@pytest.mark.parametrize("tau", [0.2, 1.0])
def test_ipo_primary_reaches_win_rate_tilt(tau):
    """IPO's population optimum: h_i - h_j = (w_i - w_j) / tau, i.e. pi ∝ pi_ref exp(w_0 / tau)."""
    inst = bt_instance(1)
    res = baselines.ipo_primary(inst.counts, inst.ref, tau, adam=STABLE_IPO)
    assert res.policies.shape == (1, 3, 6) and res.parameters == [{"weight": [1.0, 0.0]}]
    np.testing.assert_allclose(res.policies[0], tilt(inst.ref, inst.rates[0], tau), atol=1e-4)
    default = baselines.ipo_primary(inst.counts, inst.ref, tau)
    np.testing.assert_allclose(default.policies[0], tilt(inst.ref, inst.rates[0], tau), atol=5e-3)


def test_scalarised_ipo_is_the_mopo_family():
    """Row (1 - s, s) reaches pi ∝ pi_ref exp(((1 - s) w_0 + s w_1) / tau): MOPO's tilt with
    lam = s / (1 - s) at KL strength tau / (1 - s), which the exact dual solver recovers."""
    inst, tau = bt_instance(2), 0.3
    res = baselines.scalarised_ipo(inst.counts, inst.ref, tau, adam=STABLE_IPO)
    grid = baselines.weight_grid(2)
    assert [p["weight"] for p in res.parameters] == grid.tolist()
    expected = tilt(inst.ref, np.einsum("gk,kmn->gmn", grid, inst.rates), tau)
    np.testing.assert_allclose(res.policies, expected, atol=1e-4)

    s, policy = grid[3, 1], res.policies[3]
    nu = np.full(3, 1.0 / 3)
    achieved = float(np.einsum("m,mn,mn->", nu, policy, inst.rates[1]))
    sol = solve_scores(inst.rates[0], inst.rates[1:], [achieved], tau / (1 - s), inst.ref, nu)
    np.testing.assert_allclose(sol.multipliers, [s / (1 - s)], rtol=1e-4)
    np.testing.assert_allclose(sol.policy, policy, atol=1e-4)


# ---------------------------------------------------------------------------- DPO family


@pytest.mark.parametrize("tau", [0.2, 1.0])
def test_dpo_primary_reaches_reward_tilt_on_bt_data(tau):
    """DPO's population optimum on BT data: h_i - h_j = (r_i - r_j) / tau."""
    inst = bt_instance(3)
    res = baselines.dpo_primary(inst.counts, inst.ref, tau, adam=STABLE_DPO)
    np.testing.assert_allclose(res.policies[0], tilt(inst.ref, inst.rewards[0], tau), atol=1e-4)
    default = baselines.dpo_primary(inst.counts, inst.ref, tau)
    np.testing.assert_allclose(default.policies[0], tilt(inst.ref, inst.rewards[0], tau), atol=5e-3)


def test_dpo_ignores_kl_on_deterministic_data_while_ipo_does_not():
    inst, tau = deterministic_instance(), 1.0
    dpo = baselines.dpo_primary(inst.counts, inst.ref, tau)
    assert dpo.policies[0, 0, 0] > 0.99
    ipo = baselines.ipo_primary(inst.counts, inst.ref, tau, adam=STABLE_IPO)
    np.testing.assert_allclose(ipo.policies[0], tilt(inst.ref, inst.rates[0], tau), atol=1e-4)
    assert ipo.policies[0, 0, 0] < 0.5


def modpo_loss(theta, freqs0, log_ref, rhat, weight, tau):
    """MODPO's loss (Zhou et al. 2023), written out: theta (M, N), freqs0 (M, N, N), rhat (K, M, N)."""
    h = theta - log_ref
    margin = np.einsum("k,kmn->mn", weight[1:], rhat[1:])
    z = (tau / weight[0]) * (h[:, :, None] - h[:, None, :]) - (margin[:, :, None] - margin[:, None, :]) / weight[0]
    return float(np.sum(freqs0 * np.logaddexp(0.0, -z)))


def numerical_gradient(f, x, step=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = step
        grad[idx] = (f(x + e) - f(x - e)) / (2 * step)
    return grad


def test_weighted_dpo_optimum_is_a_stationary_point_of_modpo_loss():
    """Derived optimum: pi ∝ pi_ref exp((a_0 r_0 + sum_{k>=1} a_k rhat_k) / tau), since the link is
    stationary when its argument equals the primary's BT margin r_0[i] - r_0[j]."""
    inst, tau = bt_instance(4), 0.5
    rhat = baselines.fit_bt_rewards(inst.counts)
    freqs0 = inst.counts[0] / inst.counts[0].sum(axis=(1, 2), keepdims=True)
    log_ref = np.log(inst.ref)
    for weight in (np.array([0.7, 0.3]), np.array([0.2, 0.8])):
        loss = lambda th: modpo_loss(th, freqs0, log_ref, rhat, weight, tau)  # noqa: E731
        optimum = log_ref + (weight[0] * inst.rewards[0] + weight[1] * rhat[1]) / tau
        assert np.abs(numerical_gradient(loss, optimum)).max() < 1e-8
        assert np.abs(numerical_gradient(loss, log_ref)).max() > 1e-3


def test_weighted_dpo_trains_to_its_optimum_and_floors_the_primary_weight():
    inst, tau = bt_instance(4), 0.5
    rhat = baselines.fit_bt_rewards(inst.counts)
    res = baselines.weighted_dpo(inst.counts, inst.ref, tau, steps=3000, adam=STABLE_MODPO)
    used = np.array([p["weight"] for p in res.parameters])
    assert res.parameters[-1] == {"weight": [0.01, 0.99], "requested_weight": [0.0, 1.0]}
    np.testing.assert_allclose(used[:-1], baselines.weight_grid(2)[:-1])
    expected = tilt(inst.ref, np.einsum("gk,kmn->gmn", used, np.stack([inst.rewards[0], rhat[1]])), tau)
    np.testing.assert_allclose(res.policies[:-1], expected[:-1], atol=1e-4)
    np.testing.assert_allclose(res.policies[-1], expected[-1], atol=2e-3)  # stiff: scale tau / 0.01


def test_weighted_dpo_primary_only_equals_dpo_primary():
    inst, tau = bt_instance(5), 0.4
    dpo = baselines.dpo_primary(inst.counts, inst.ref, tau, steps=500)
    modpo = baselines.weighted_dpo(inst.counts, inst.ref, tau, weights=[[1.0, 0.0], [0.5, 0.5]], steps=500)
    np.testing.assert_allclose(modpo.policies[0], dpo.policies[0], atol=1e-12)


def test_rewarded_soups_primary_row_is_dpo_and_soups_reach_mixed_reward_tilt():
    """On BT data each DPO policy is pi_ref exp(r_k / tau), so the soup at a is pi_ref exp(a . r / tau)."""
    inst, tau = bt_instance(6), 0.5
    soups = baselines.rewarded_soups(inst.counts, inst.ref, tau, adam=STABLE_DPO)
    dpo = baselines.dpo_primary(inst.counts, inst.ref, tau, adam=STABLE_DPO)
    np.testing.assert_allclose(soups.policies[0], dpo.policies[0], atol=1e-12)
    expected = tilt(inst.ref, np.einsum("gk,kmn->gmn", baselines.weight_grid(2), inst.rewards), tau)
    np.testing.assert_allclose(soups.policies, expected, atol=1e-4)


# ---------------------------------------------------------------------------- reward Lagrangian


def bt_implied_win_rates(rewards: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """(M, N): sum_y' mu[m, y'] sigmoid(r[m, y] - r[m, y']), by explicit loops."""
    m, n = rewards.shape
    out = np.zeros((m, n))
    for p in range(m):
        for y in range(n):
            out[p, y] = sum(mu[p, z] / (1.0 + np.exp(rewards[p, z] - rewards[p, y])) for z in range(n))
    return out


def test_reward_lagrangian_meets_bt_implied_constraints():
    inst, tau = bt_instance(7), 0.2
    nu = np.array([0.5, 0.3, 0.2])
    thresholds = [0.45, 0.55, 0.65, 0.999]
    res = baselines.reward_lagrangian(inst.counts, inst.ref, inst.mu, tau, thresholds, prompt_weights=nu)
    wbt = bt_implied_win_rates(baselines.fit_bt_rewards(inst.counts)[1], inst.mu)
    values = np.einsum("m,tmn,mn->t", nu, res.policies, wbt)
    assert [p["threshold"] for p in res.parameters] == [[b] for b in thresholds]
    feasible = [p["feasible"] for p in res.parameters]
    assert feasible == [True, True, True, False]
    for value, b, p in zip(values[:3], thresholds, res.parameters):
        assert value >= b - 1e-6
        assert p["multipliers"][0] >= 0.0
    assert np.isfinite(res.policies).all()
    np.testing.assert_allclose(res.policies.sum(axis=-1), 1.0)


def test_reward_lagrangian_on_exact_bt_data_matches_true_reward_problem():
    """With exact BT counts and a negligible ridge, the fitted rewards are the true ones up to a
    constant, so the answer is the constrained problem on (r_0, true win-rates)."""
    inst, tau = bt_instance(8, scale=2.0), 0.3
    nu = np.full(3, 1.0 / 3)
    res = baselines.reward_lagrangian(inst.counts, inst.ref, inst.mu, tau, [0.5, 0.6], l2=1e-10)
    for row, b in zip(res.policies, [0.5, 0.6]):
        sol = solve_scores(inst.rewards[0], inst.rates[1:], [b], tau, inst.ref, nu)
        np.testing.assert_allclose(row, sol.policy, atol=1e-5)


# ---------------------------------------------------------------------------- batching, shapes, errors


def test_training_a_grid_equals_training_each_weight_alone():
    inst, tau = bt_instance(9), 0.3
    grid = baselines.weight_grid(2, 4)
    for method in (baselines.scalarised_ipo, baselines.weighted_dpo, baselines.rewarded_soups):
        together = method(inst.counts, inst.ref, tau, weights=grid, steps=300)
        for g, row in enumerate(grid):
            alone = method(inst.counts, inst.ref, tau, weights=row, steps=300)
            np.testing.assert_allclose(together.policies[g], alone.policies[0], atol=1e-12)


def test_every_baseline_runs_on_three_objectives_and_one_prompt():
    inst = bt_instance(10, k=3, m=1, n=5)
    counts, ref = inst.counts[:, 0], inst.ref[0]  # (K, N, N) and (N,): one prompt
    for name, method in baselines.BASELINES.items():
        if name == "reward_lagrangian":
            res = method(counts, ref, inst.mu[0], 0.5, [[0.5, 0.5], [0.6, 0.4]])
            assert len(res.parameters) == 2 and len(res.parameters[0]["multipliers"]) == 2
        else:
            res = method(counts, ref, 0.5, steps=20)
            assert res.loss_trace.shape == (20,)
        assert res.method == name
        assert res.policies.shape == (len(res.parameters), 1, 5)
        np.testing.assert_allclose(res.policies.sum(axis=-1), 1.0)
    assert len(baselines.weighted_dpo(counts, ref, 0.5, steps=5).parameters) == 15


def _bad_calls():
    inst = bt_instance(11)
    w, ref, mu = inst.counts, inst.ref, inst.mu
    neg = w.copy()
    neg[0, 0, 1, 2] = -1.0
    nan = w.copy()
    nan[1, 0, 0, 0] = np.nan
    zero_ref = ref.copy()
    zero_ref[0] = [1, 0, 0, 0, 0, 0]
    return [
        (baselines.dpo_primary, (neg, ref, 0.5), {}, "win_counts"),
        (baselines.ipo_primary, (nan, ref, 0.5), {}, "win_counts"),
        (baselines.dpo_primary, (w[0, 0], ref, 0.5), {}, "win_counts"),
        (baselines.dpo_primary, (w, ref[:, :5], 0.5), {}, "reference"),
        (baselines.dpo_primary, (w, zero_ref, 0.5), {}, "reference"),
        (baselines.ipo_primary, (w, ref, 0.0), {}, "tau"),
        (baselines.ipo_primary, (w, ref, 0.5), {"steps": -1}, "steps"),
        (baselines.ipo_primary, (w, ref, 0.5), {"adam": {"lr": 0.1}}, "adam"),
        (baselines.scalarised_ipo, (w, ref, 0.5), {"weights": [[1.2, -0.2]]}, "weights"),
        (baselines.scalarised_ipo, (w, ref, 0.5), {"weights": [[0.5, 0.4]]}, "weights"),
        (baselines.rewarded_soups, (w, ref, 0.5), {"weights": [[0.2, 0.3, 0.5]]}, "weights"),
        (baselines.weighted_dpo, (w[:1], ref, 0.5), {}, "win_counts"),
        (baselines.weighted_dpo, (w, ref, 0.5), {"l2": 0.0}, "l2"),
        (baselines.fit_bt_rewards, (w,), {"l2": -1.0}, "l2"),
        (baselines.reward_lagrangian, (w, ref, mu, 0.5, [[0.5, 0.5]]), {}, "thresholds"),
        (baselines.reward_lagrangian, (w, ref, mu[:2], 0.5, [0.5]), {}, "behaviour"),
        (baselines.reward_lagrangian, (w, ref, mu, -1.0, [0.5]), {}, "tau"),
        (baselines.reward_lagrangian, (w, ref, mu, 0.5, [0.5]), {"prompt_weights": [0.5, 0.5]}, "prompt_weights"),
        (baselines.weight_grid, (1,), {}, "n_objectives"),
        (baselines.weight_grid, (2, 1), {}, "n_points"),
    ]


@pytest.mark.parametrize("call", _bad_calls(), ids=lambda c: f"{c[0].__name__}-{c[3]}")
def test_bad_inputs_raise_value_error_naming_the_argument(call):
    fn, args, kwargs, name = call
    with pytest.raises(ValueError, match=rf"^{name}:"):
        fn(*args, **kwargs)
