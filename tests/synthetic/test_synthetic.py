"""Tests for the synthetic structures (synthetic/structures.py) and the comparison
datasets sampled from them (synthetic/sampling.py)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mopo_core.validation import check_preferences
from synthetic import (
    STRUCTURES,
    ComparisonData,
    empirical_win_rates,
    estimate_preferences,
    exact_win_counts,
    make_structure,
    sample_comparisons,
)


def assert_valid(structure, n_responses: int, n_prompts: int) -> None:
    """Shapes, ``P + P^T = 1``, values in [0, 1], distributions summing to one."""
    k = structure.n_objectives
    prefs = structure.preferences
    assert prefs.shape == (k, n_prompts, n_responses, n_responses)
    assert structure.n_prompts == n_prompts and structure.n_responses == n_responses
    assert len(structure.objective_names) == k
    assert np.all((prefs >= 0.0) & (prefs <= 1.0))
    np.testing.assert_allclose(prefs + np.swapaxes(prefs, -1, -2), 1.0, atol=1e-12)
    np.testing.assert_array_equal(np.diagonal(prefs, axis1=-2, axis2=-1), 0.5)
    check_preferences(prefs)
    for dist in (structure.reference, structure.behaviour):
        assert dist.shape == (n_prompts, n_responses)
        assert np.all(dist > 0.0)
        np.testing.assert_allclose(dist.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(structure.prompt_weights, 1.0 / n_prompts)
    if structure.latent_rewards is not None:
        assert structure.latent_rewards.shape == (k, n_prompts, n_responses)


def has_three_cycle(matrix: np.ndarray) -> bool:
    """True when some i > j > l > i with every preference strictly above 0.5."""
    beats = (matrix > 0.5).astype(int)
    return np.trace(beats @ beats @ beats) > 0


# --------------------------------------------------------------------------- structures


@pytest.mark.parametrize("name", STRUCTURES)
@pytest.mark.parametrize("n_responses", [2, 8, 50])
@pytest.mark.parametrize("n_prompts", [1, 3])
def test_every_structure_is_valid(name, n_responses, n_prompts):
    assert_valid(make_structure(name, n_responses, n_prompts, seed=3), n_responses, n_prompts)


@pytest.mark.parametrize("name", STRUCTURES)
def test_same_seed_same_instance_different_seed_different(name):
    a = make_structure(name, 8, 2, seed=11)
    b = make_structure(name, 8, 2, seed=11)
    c = make_structure(name, 8, 2, seed=12)
    np.testing.assert_array_equal(a.preferences, b.preferences)
    np.testing.assert_array_equal(a.reference, b.reference)
    assert a.params == b.params
    assert not np.array_equal(a.preferences, c.preferences)


@pytest.mark.parametrize("name", STRUCTURES)
def test_dirichlet_distributions_are_seeded_and_have_full_support(name):
    kwargs = {"reference": "dirichlet", "behaviour": "dirichlet", "dirichlet_alpha": 0.1}
    a = make_structure(name, 8, 2, seed=5, **kwargs)
    b = make_structure(name, 8, 2, seed=5, **kwargs)
    assert_valid(a, 8, 2)
    np.testing.assert_array_equal(a.behaviour, b.behaviour)
    assert not np.allclose(a.reference, a.behaviour)
    assert a.reference.min() >= 1e-3 - 1e-15
    # The preferences come from their own stream: the reference choice does not change them.
    np.testing.assert_array_equal(a.preferences, make_structure(name, 8, 2, seed=5).preferences)


def test_default_behaviour_is_the_reference():
    s = make_structure("bt_conflict", reference="dirichlet")
    np.testing.assert_array_equal(s.behaviour, s.reference)


def test_arrays_are_read_only():
    s = make_structure("bt_aligned")
    with pytest.raises(ValueError):
        s.preferences[0, 0, 0, 1] = 0.3


@pytest.mark.parametrize("name, sign", [("bt_aligned", 1), ("bt_conflict", -1)])
def test_bt_reward_correlation_sign(name, sign):
    rewards = make_structure(name, 200, seed=0).latent_rewards
    corr = np.corrcoef(rewards[0, 0], rewards[1, 0])[0, 1]
    assert sign * corr > 0.6


def test_bt_preferences_are_sigmoid_of_reward_differences():
    s = make_structure("bt_independent", 6, 2, seed=4)
    r = s.latent_rewards
    expected = 1.0 / (1.0 + np.exp(-(r[..., :, None] - r[..., None, :])))
    np.testing.assert_allclose(s.preferences, expected, atol=1e-12)


def test_bt_correlation_and_scale_params_override():
    s = make_structure("bt_independent", 200, seed=1, correlation=0.95, scale=2.0)
    assert s.params["correlation"] == 0.95 and s.params["scale"] == 2.0
    r = s.latent_rewards[:, 0]
    assert np.corrcoef(r[0], r[1])[0, 1] > 0.9
    assert 1.5 < r[0].std() < 2.5


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("n_responses", [8, 50])
def test_cyclic_primary_is_intransitive(seed, n_responses):
    s = make_structure("cyclic", n_responses, seed=seed)
    assert has_three_cycle(s.preferences[0, 0])
    assert s.latent_rewards is None


def test_cyclic_without_cyclic_term_is_transitive():
    s = make_structure("cyclic", 8, seed=0, cyclic_strength=0.0)
    assert not has_three_cycle(s.preferences[0, 0])


def test_deterministic_preferences_are_zero_one_off_the_diagonal():
    prefs = make_structure("deterministic", 20, 2, seed=7).preferences
    off_diagonal = ~np.eye(20, dtype=bool)
    assert set(np.unique(prefs[..., off_diagonal])) == {0.0, 1.0}
    assert not has_three_cycle(prefs[0, 0]) and not has_three_cycle(prefs[1, 0])
    # The two orders conflict: objectives disagree on most pairs.
    assert np.mean(prefs[0][..., off_diagonal] != prefs[1][..., off_diagonal]) > 0.6


def test_mixture_primary_is_not_one_group():
    s = make_structure("mixture", 8, seed=2)
    primary = s.preferences[0, 0][~np.eye(8, dtype=bool)]
    assert np.all((primary > 0.29) & (primary < 0.71))
    assert np.abs(primary - 0.5).max() > 0.15
    even = make_structure("mixture", 8, seed=2, mix=0.5).preferences[0]
    np.testing.assert_allclose(even, 0.5, atol=1e-12)


def test_three_objectives_has_an_aligned_and_a_conflicting_secondary():
    s = make_structure("three_objectives", 200, seed=0)
    assert s.n_objectives == 3 and len(set(s.objective_names)) == 3
    r = s.latent_rewards[:, 0]
    assert np.corrcoef(r[0], r[1])[0, 1] > 0.6
    assert np.corrcoef(r[0], r[2])[0, 1] < -0.6


def test_multi_prompt_cycles_through_components():
    components = ("deterministic", "bt_aligned")
    s = make_structure("multi_prompt", 6, 5, seed=9, components=components)
    assert s.params["components"] == components
    for m in range(5):
        zero_one = np.isin(s.preferences[:, m], (0.0, 0.5, 1.0)).all()
        assert zero_one == (m % 2 == 0)
    assert not np.array_equal(s.preferences[:, 0], s.preferences[:, 2])


def test_multi_prompt_keeps_rewards_when_all_components_are_bt():
    s = make_structure("multi_prompt", 5, 3, components=("bt_conflict", "bt_aligned"))
    assert s.latent_rewards.shape == (2, 3, 5)
    assert make_structure("multi_prompt", 5, 3).latent_rewards is None


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(STRUCTURES),
    n_responses=st.integers(2, 30),
    n_prompts=st.integers(1, 4),
    seed=st.integers(0, 2**32),
    reference=st.sampled_from(["uniform", "dirichlet"]),
    behaviour=st.sampled_from(["reference", "uniform", "dirichlet"]),
)
def test_any_seed_and_size_gives_a_valid_instance(
    name, n_responses, n_prompts, seed, reference, behaviour
):
    s = make_structure(
        name, n_responses, n_prompts, seed, reference=reference, behaviour=behaviour
    )
    assert_valid(s, n_responses, n_prompts)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: make_structure("bt_nonsense"), r"unknown structure 'bt_nonsense'.*bt_aligned"),
        (
            lambda: make_structure("cyclic", temperature=2.0),
            r"unknown parameter.*temperature.*cyclic_strength",
        ),
        (lambda: make_structure("bt_aligned", cyclic_strength=1.0), r"cyclic_strength.*accepted"),
        (lambda: make_structure("bt_aligned", n_responses=1), r"n_responses: must be >= 2"),
        (lambda: make_structure("bt_aligned", n_prompts=0), r"n_prompts: must be >= 1"),
        (lambda: make_structure("bt_aligned", n_responses=2.5), r"n_responses: must be an integer"),
        (lambda: make_structure("bt_aligned", seed=-1), r"seed: must be >= 0"),
        (lambda: make_structure("bt_aligned", correlation=1.5), r"correlation: must be in \[-1"),
        (lambda: make_structure("bt_aligned", scale=0.0), r"scale: must be > 0"),
        (lambda: make_structure("mixture", mix=-0.1), r"mix: must be in \[0"),
        (lambda: make_structure("bt_aligned", reference="skewed"), r"reference: must be one of"),
        (
            lambda: make_structure("multi_prompt", components=("three_objectives",)),
            r"components: unknown component",
        ),
        (lambda: make_structure("multi_prompt", components=()), r"components: need at least one"),
        (lambda: make_structure("three_objectives", correlations=(0.5,)), r"correlations: expect"),
        (lambda: sample_comparisons(make_structure("bt_aligned"), 0), r"n_per_prompt: must be >="),
        (lambda: sample_comparisons("bt_aligned", 10), r"structure: expected a Structure"),
        (lambda: estimate_preferences(np.ones((2, 1, 3, 3)), prior=-1.0), r"prior: must be >= 0"),
        (lambda: estimate_preferences(-np.ones((2, 1, 3, 3))), r"win_counts: .*>= 0"),
        (lambda: estimate_preferences(np.ones((2, 3, 3))), r"win_counts: expected shape"),
        (lambda: ComparisonData([0], [0], [3], [[1.0]], 1, 3), r"second: indices must lie in"),
        (lambda: ComparisonData([0], [0], [1], [[1.5]], 1, 3), r"labels: .*\[0, 1\]"),
        (lambda: ComparisonData([0, 0], [0], [1], [[1.0]], 1, 3), r"prompt: expected shape \(1,\)"),
        (lambda: empirical_win_rates(np.zeros(3)), r"data: expected ComparisonData"),
    ],
)
def test_invalid_input_raises_a_helpful_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def large_sample():
    structure = make_structure("cyclic", 4, 2, seed=1, behaviour="dirichlet", dirichlet_alpha=3.0)
    return structure, sample_comparisons(structure, 200_000, seed=0)


def test_sampling_is_seeded():
    s = make_structure("mixture", 5, 2)
    a, b, c = (sample_comparisons(s, 50, seed) for seed in (1, 1, 2))
    for field in ("prompt", "first", "second", "labels"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.labels, c.labels)


def test_sample_shapes_and_counts(large_sample):
    structure, data = large_sample
    assert data.n_comparisons == 2 * 200_000 and data.n_objectives == 2
    np.testing.assert_array_equal(np.bincount(data.prompt), [200_000, 200_000])
    assert set(np.unique(data.labels)) == {0.0, 1.0}
    wins = data.win_counts()
    assert wins.shape == (2, 2, 4, 4)
    np.testing.assert_allclose(wins.sum(axis=(2, 3)), 200_000)


def test_pairs_follow_the_behaviour(large_sample):
    structure, data = large_sample
    for m in range(2):
        frequency = np.bincount(data.first[data.prompt == m], minlength=4) / 200_000
        se = np.sqrt(structure.behaviour[m] * (1 - structure.behaviour[m]) / 200_000)
        assert np.all(np.abs(frequency - structure.behaviour[m]) < 5 * se)


def test_estimated_preferences_converge_to_the_truth(large_sample):
    structure, data = large_sample
    wins = data.win_counts()
    estimate = estimate_preferences(wins)
    pair_counts = wins + np.swapaxes(wins, -1, -2)
    truth = structure.preferences
    se = np.sqrt(truth * (1 - truth) / pair_counts) + 1.0 / pair_counts
    assert np.all(np.abs(estimate - truth) <= 5 * se)


def test_empirical_win_rates_converge_to_p_times_mu(large_sample):
    structure, data = large_sample
    rates, counts = empirical_win_rates(data)
    truth = np.einsum("kmij,mj->kmi", structure.preferences, structure.behaviour)
    np.testing.assert_array_equal(counts.sum(axis=1), 2 * 200_000)
    assert np.all(np.abs(rates - truth) <= 5 * np.sqrt(0.25 / counts))


@pytest.mark.parametrize("name", STRUCTURES)
def test_exact_win_counts_give_back_the_preferences(name):
    s = make_structure(name, 6, 2, seed=1, behaviour="dirichlet")
    wins = exact_win_counts(s)
    np.testing.assert_allclose(wins.sum(axis=(2, 3)), 1.0, atol=1e-12)
    np.testing.assert_allclose(estimate_preferences(wins, prior=0.0), s.preferences, atol=1e-12)


def test_win_counts_count_both_orderings_and_self_pairs_as_ties():
    data = ComparisonData(
        prompt=[0, 0, 0],
        first=[0, 1, 2],
        second=[1, 0, 2],
        labels=[[1.0, 0.25], [1.0, 0.0], [0.0, 1.0]],
        n_prompts=1,
        n_responses=3,
    )
    wins = data.win_counts()
    np.testing.assert_allclose(wins[0, 0], [[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(wins[1, 0], [[0, 1.25, 0], [0.75, 0, 0], [0, 0, 1]])
    rates, counts = empirical_win_rates(data)
    np.testing.assert_array_equal(counts, [[2, 2, 2]])
    np.testing.assert_allclose(rates[:, 0], [[0.5, 0.5, 0.5], [0.625, 0.375, 0.5]])


def test_unseen_pairs_and_responses():
    data = ComparisonData([0], [0], [1], [[1.0, 0.0]], n_prompts=2, n_responses=3)
    estimate = estimate_preferences(data.win_counts(), prior=0.0)
    assert estimate[0, 0, 0, 1] == 1.0 and estimate[1, 0, 0, 1] == 0.0
    assert estimate[0, 0, 0, 2] == 0.5 and np.all(estimate[:, 1] == 0.5)
    smoothed = estimate_preferences(data.win_counts(), prior=1.0)
    assert smoothed[0, 0, 0, 1] == pytest.approx(0.75)
    rates, counts = empirical_win_rates(data)
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 0, 0]])
    assert rates[0, 0, 2] == 0.5 and np.all(rates[:, 1] == 0.5)
