"""Tests for the synthetic text task (synthetic/text_task.py): exact scorers, the built-in
helpfulness/harmlessness conflict, preference oracles, seeded generation, pair records and
exact win-rates."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit

from synthetic.text_task import (
    MAX_WORDS,
    RISKY_WORDS,
    TextTask,
    brevity,
    compose_response,
    harmlessness,
    helpfulness,
    is_well_formed,
    preference,
    preference_matrix,
    prompt_topic_words,
    score,
    vocabulary,
)

PROMPT = "how do i cook garlic pasta and butter ?"


# ------------------------------------------------------------------------------ scorers


def test_prompt_topic_words_are_read_from_the_text():
    assert prompt_topic_words(PROMPT) == ("garlic", "pasta", "butter")
    with pytest.raises(ValueError, match="prompt: names no topic word"):
        prompt_topic_words("how do i ?")


@pytest.mark.parametrize(
    "response, helpful, risky, n_words",
    [
        ("toxic garlic with butter you", 2 / 3, 1, 5),
        ("you should try the oven", 0.0, 0, 5),
        ("illegal garlic poison pasta butter overdose", 1.0, 3, 6),
        ("garlic garlic garlic", 1 / 3, 0, 3),
        ("", 0.0, 0, 0),
    ],
)
def test_scorers_match_hand_computation(response, helpful, risky, n_words):
    assert helpfulness(PROMPT, response) == pytest.approx(helpful)
    assert harmlessness(response) == pytest.approx(math.exp(-risky))
    assert brevity(response) == pytest.approx(1 - min(n_words, 12) / 12)
    np.testing.assert_allclose(
        score(PROMPT, response, ("brevity", "helpfulness", "harmlessness")),
        [1 - min(n_words, 12) / 12, helpful, math.exp(-risky)],
    )


def test_repeated_risky_words_each_count_and_long_responses_have_zero_brevity():
    assert harmlessness("toxic toxic garlic") == pytest.approx(math.exp(-2))
    assert brevity(" ".join(["you"] * 15)) == 0.0


def test_unknown_or_repeated_objectives_are_refused():
    with pytest.raises(ValueError, match="objectives: unknown objective 'humour'"):
        score(PROMPT, "garlic", ("helpfulness", "humour"))
    with pytest.raises(ValueError, match="objectives: repeated"):
        TextTask(objectives=("brevity", "brevity"))


# --------------------------------------------------------------------------- preferences


def test_deterministic_preferences_at_temperature_zero():
    safe, risky = "you should try garlic", "toxic garlic pasta butter"
    assert preference(PROMPT, risky, safe, "helpfulness", 0) == 1.0
    assert preference(PROMPT, safe, risky, "helpfulness", 0) == 0.0
    assert preference(PROMPT, safe, risky, "harmlessness", 0) == 1.0
    assert preference(PROMPT, "garlic you", "garlic it", "helpfulness", 0) == 0.5


def test_soft_preference_is_the_sigmoid_of_the_score_gap():
    a, b = "toxic garlic pasta", "garlic"
    p = preference(PROMPT, a, b, "helpfulness", 0.25)
    assert p == pytest.approx(expit((2 / 3 - 1 / 3) / 0.25))
    assert p + preference(PROMPT, b, a, "helpfulness", 0.25) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="temperature"):
        preference(PROMPT, a, b, "helpfulness", -1.0)


def test_preference_matrix_is_complementary_with_half_diagonal():
    task = TextTask(n_prompts=3, n_candidates=6)
    prompt = task.prompts()[0]
    prefs = preference_matrix(prompt, task.candidates(prompt), task.objectives, task.temperature)
    assert prefs.shape == (2, 6, 6)
    np.testing.assert_allclose(prefs + prefs.transpose(0, 2, 1), 1.0)
    np.testing.assert_allclose(np.diagonal(prefs, axis1=1, axis2=2), 0.5)


# ---------------------------------------------------------------------------- generators


@pytest.mark.parametrize("covered, risky, n_words", [(0, 0, 3), (3, 0, 3), (2, 2, 12), (3, 3, 6), (0, 5, 9), (1, 0, 12)])
def test_compose_response_has_exactly_the_requested_counts(covered, risky, n_words):
    rng = np.random.default_rng(0)
    response = compose_response(PROMPT, covered, risky, n_words, rng)
    words = response.split()
    assert len(words) == n_words
    assert helpfulness(PROMPT, response) == pytest.approx(covered / 3)
    assert sum(w in RISKY_WORDS for w in words) == risky
    assert is_well_formed(response)


@pytest.mark.parametrize(
    "args, field",
    [((4, 0, 6), "n_covered"), ((0, 13, 12), "n_risky"), ((2, 2, 3), "n_words"), ((0, 0, 13), "n_words")],
)
def test_compose_response_refuses_impossible_requests(args, field):
    with pytest.raises(ValueError, match=field):
        compose_response(PROMPT, *args, np.random.default_rng(0))


def test_prompts_and_candidates_are_well_formed_and_in_the_vocabulary():
    task = TextTask(n_prompts=30, n_candidates=8, words_per_prompt=2)
    prompts = task.prompts()
    assert len({p.text for p in prompts}) == 30
    assert [p.index for p in prompts] == list(range(30))
    vocab = set(vocabulary())
    for prompt in prompts:
        assert prompt.text.endswith(" ?")
        assert prompt_topic_words(prompt) == prompt.topic_words and len(prompt.topic_words) == 2
        candidates = task.candidates(prompt.text)
        assert len(candidates) == 8 and all(is_well_formed(c) for c in candidates)
        assert set(prompt.text.split()) <= vocab
    assert all(set(text.split()) <= vocab for text in task.corpus())
    assert len(task.corpus()) == 30 * 8


def test_helpfulness_and_harmlessness_conflict_over_candidates():
    task = TextTask(n_prompts=200, n_candidates=8)
    scores = np.concatenate([task.scores(p) for p in task.prompts()], axis=1)
    correlation = np.corrcoef(scores)[0, 1]
    assert correlation < -0.6, correlation  # measured -0.83 (seed 0)
    assert scores[0].std() > 0.2 and scores[1].std() > 0.2


def test_same_config_same_data_and_seed_changes_it():
    a, b = TextTask(n_prompts=5), TextTask(n_prompts=5)
    assert a.prompts() == b.prompts() and a.corpus() == b.corpus()
    assert a.sample_pairs(3, seed=7) == b.sample_pairs(3, seed=7)
    assert a.sample_pairs(3, seed=7) != a.sample_pairs(3, seed=8)
    assert TextTask(n_prompts=5, seed=1).corpus() != a.corpus()


def test_more_candidates_keep_the_first_ones():
    """A prompt's candidate stream does not depend on other prompts or settings."""
    small, large = TextTask(n_prompts=4, n_candidates=4), TextTask(n_prompts=9, n_candidates=10)
    for prompt in small.prompts():
        assert large.candidates(prompt)[:4] == small.candidates(prompt)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"n_prompts": 0}, "n_prompts"),
        ({"n_candidates": 1}, "n_candidates"),
        ({"temperature": -0.1}, "temperature"),
        ({"words_per_prompt": 9}, "words_per_prompt"),
        ({"risk_coupling": 1.5}, "risk_coupling"),
        ({"objectives": ()}, "objectives"),
    ],
)
def test_bad_task_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TextTask(**kwargs)


def test_a_foreign_prompt_is_refused():
    with pytest.raises(ValueError, match="prompt: not one of this task's prompts"):
        TextTask(n_prompts=2).candidates(PROMPT)


# ------------------------------------------------------------------------- pair records


def test_sample_pairs_records_match_the_data_layer_schema():
    task = TextTask(n_prompts=4, n_candidates=5, objectives=("helpfulness", "harmlessness", "brevity"))
    records = task.sample_pairs(6, seed=3)
    assert len(records) == 24
    for record in records:
        assert set(record) == {"prompt", "response_a", "response_b", "labels"}
        assert list(record["labels"]) == ["helpfulness", "harmlessness", "brevity"]
        assert all(label in (0.0, 1.0) for label in record["labels"].values())
        pool = task.candidates(record["prompt"])
        assert record["response_a"] in pool and record["response_b"] in pool


def test_soft_labels_are_the_oracle_probabilities():
    task = TextTask(n_prompts=3, n_candidates=4, temperature=0.2)
    for record in task.sample_pairs(5, seed=0, soft=True):
        for objective, label in record["labels"].items():
            expected = preference(record["prompt"], record["response_a"], record["response_b"], objective, 0.2)
            assert label == pytest.approx(expected)


def test_hard_labels_follow_a_deterministic_oracle():
    task = TextTask(n_prompts=5, n_candidates=6, temperature=0.0)
    for record in task.sample_pairs(8, seed=1):
        for objective, label in record["labels"].items():
            p = preference(record["prompt"], record["response_a"], record["response_b"], objective, 0.0)
            if p != 0.5:
                assert label == p


def test_hard_label_frequencies_match_the_oracle():
    task = TextTask(n_prompts=40, n_candidates=4, temperature=0.3)
    hard = task.sample_pairs(25, seed=5)
    soft = task.sample_pairs(25, seed=5, soft=True)
    for objective in task.objectives:
        gap = np.mean([h["labels"][objective] - s["labels"][objective] for h, s in zip(hard, soft)])
        assert abs(gap) < 0.05  # 1000 Bernoulli draws: standard error < 0.016


# --------------------------------------------------------------------------- win-rates


def brute_force_win_rates(task, prompt, responses, behaviour):
    k, n = len(task.objectives), len(responses)
    out = np.zeros((k, n))
    for o, objective in enumerate(task.objectives):
        for i in range(n):
            num = den = 0.0
            for j in range(n):
                if j != i:
                    num += behaviour[j] * preference(prompt, responses[i], responses[j], objective, task.temperature)
                    den += behaviour[j]
            out[o, i] = num / den
    return out


@pytest.mark.parametrize("temperature", [0.0, 0.1])
def test_exact_win_rates_match_a_brute_force_loop(temperature):
    task = TextTask(n_prompts=2, n_candidates=7, temperature=temperature,
                    objectives=("helpfulness", "harmlessness", "brevity"))
    prompt = task.prompts()[1]
    responses = task.candidates(prompt)
    uniform = task.exact_win_rates(prompt, responses)
    assert uniform.shape == (3, 7)
    np.testing.assert_allclose(uniform, brute_force_win_rates(task, prompt, responses, np.ones(7)))
    mu = np.random.default_rng(0).dirichlet(np.ones(7))
    np.testing.assert_allclose(
        task.exact_win_rates(prompt, responses, mu), brute_force_win_rates(task, prompt, responses, mu)
    )


def test_win_rates_of_a_pair_are_the_preferences():
    task = TextTask(n_prompts=1, temperature=0.0)
    w = task.exact_win_rates(PROMPT, ["toxic garlic pasta", "you should try garlic"])
    np.testing.assert_allclose(w, [[1.0, 0.0], [0.0, 1.0]])


def test_bad_win_rate_inputs_are_refused():
    task = TextTask(n_prompts=1)
    with pytest.raises(ValueError, match="responses"):
        task.exact_win_rates(PROMPT, ["garlic"])
    with pytest.raises(ValueError, match="behaviour"):
        task.exact_win_rates(PROMPT, ["garlic", "pasta"], [1.0])
    with pytest.raises(ValueError, match="behaviour"):
        task.exact_win_rates(PROMPT, ["garlic", "pasta", "butter"], [1.0, 0.0, 0.0])


def test_max_words_bounds_every_candidate():
    task = TextTask(n_prompts=20, n_candidates=10)
    lengths = [len(r.split()) for p in task.prompts() for r in task.candidates(p)]
    assert min(lengths) >= 3 and max(lengths) <= MAX_WORDS
