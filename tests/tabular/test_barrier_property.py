"""MOPO-LB's multipliers (``mopo_core.tabular.algorithm1.barrier_multipliers``) on random instances.

For every instance the solver must return, without an exception, multipliers at which the
fixed point ``lam_j = barrier_multiplier(V_j(pi_lam) - b_j)`` holds to 1e-9 in slack
(win-rate) units, i.e. ``|V_j(pi_lam) - b_j - slack(lam_j)| <= 1e-9``, with the residual and
the slack written out in ``tests.reference_solvers``, and agree with an independent solve
(nested brentq, ``barrier_fixed_point_nested``). Instances: random preference matrices with
P + P^T = 1, random reference, behaviour and prompt weights, thresholds around the
reference's values (some unattainable, which puts the multiplier on the barrier's quadratic
extension), tau in [0.02, 1] and sigma, delta in [1e-4, 1e-2].
"""
import numpy as np
from hypothesis import given, settings, strategies as st

from mopo_core.tabular.algorithm1 import barrier_multipliers
from mopo_core.tabular.solver import TiltFamily
from tests.reference_solvers import barrier_fixed_point_nested, barrier_residual_reference

log_uniform = st.floats(-4.0, -2.0).map(lambda e: 10.0**e)


def _instance(seed, n_objectives, n_prompts, n_responses):
    """Win-rates (K, M, N) of random preferences, a reference (M, N) and prompt weights (M,)."""
    rng = np.random.default_rng(seed)
    upper = np.triu(rng.uniform(size=(n_objectives, n_prompts, n_responses, n_responses)), 1)
    preferences = upper + np.swapaxes(np.triu(1.0 - upper, 1), -1, -2)
    preferences[..., np.arange(n_responses), np.arange(n_responses)] = 0.5
    assert np.allclose(preferences + np.swapaxes(preferences, -1, -2), 1.0)
    behaviour = rng.dirichlet(np.ones(n_responses), size=n_prompts)
    rates = np.einsum("kmij,mj->kmi", preferences, behaviour)
    reference = rng.dirichlet(np.ones(n_responses), size=n_prompts)
    return rates, reference, rng.dirichlet(np.ones(n_prompts))


def _check(seed, n_objectives, n_prompts, n_responses, offsets, tau, sigma, delta):
    rates, reference, nu = _instance(seed, n_objectives, n_prompts, n_responses)
    at_reference = np.einsum("m,mn,jmn->j", nu, reference, rates[1:])
    b = at_reference + np.asarray(offsets[: n_objectives - 1])
    family = TiltFamily(rates[0], rates[1:], reference, nu, tau)

    lam = barrier_multipliers(family, b, sigma, delta)

    assert lam.shape == (n_objectives - 1,) and np.all(lam > 0)
    residual = barrier_residual_reference(lam, rates, reference, nu, b, tau, sigma, delta)
    assert np.max(np.abs(residual)) <= 1e-9, residual
    expected = barrier_fixed_point_nested(rates, reference, nu, b, tau, sigma, delta)
    assert np.max(np.abs(barrier_residual_reference(expected, rates, reference, nu, b, tau, sigma, delta))) <= 1e-9
    np.testing.assert_allclose(lam, expected, rtol=1e-7)


offsets = st.lists(st.floats(-0.4, 0.4), min_size=2, max_size=2)
taus = st.floats(0.02, 1.0)


@settings(max_examples=120, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), n_prompts=st.sampled_from([1, 3]), n_responses=st.integers(2, 6),
       offsets=offsets, tau=taus, sigma=log_uniform, delta=log_uniform)
def test_three_objective_fixed_point(seed, n_prompts, n_responses, offsets, tau, sigma, delta):
    _check(seed, 3, n_prompts, n_responses, offsets, tau, sigma, delta)


@settings(max_examples=120, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), n_objectives=st.sampled_from([2, 3]), n_prompts=st.integers(2, 5),
       n_responses=st.integers(2, 6), offsets=offsets, tau=taus, sigma=log_uniform, delta=log_uniform)
def test_multi_prompt_fixed_point(seed, n_objectives, n_prompts, n_responses, offsets, tau, sigma, delta):
    _check(seed, n_objectives, n_prompts, n_responses, offsets, tau, sigma, delta)
