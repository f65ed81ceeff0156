"""Offline MOPO keeps its leash (issue 14, item 1): win-rates smoothed by a stated prior, KL to the
starting model held within (1 + sum lambda) / tau when the data come from another model, a lagged
reference measured relative to the start (no jump at a refresh), and a ratchet on a window's mean.
The convergence to the exact tabular solution on data from the starting model is
``tests/lm/test_lm_trainer.py::test_with_exact_win_rates_the_trainer_reaches_the_exact_tabular_solution``."""
import numpy as np
import pytest
import torch

from mopo_core.data.preferences import PreferenceDataset
from mopo_core.lm.config import TrainConfig
from mopo_core.lm.losses import policy_reference_scores
from mopo_core.lm.models import sample, tiny_gpt, word_tokenizer
from mopo_core.lm.trainer import LEASH_CHECK_EVERY, Trainer, encode_rows, response_win_rates
from synthetic.text_task import TextTask, vocabulary

TOKENIZER = word_tokenizer(vocabulary())
PROMPTS = sorted({r["prompt"] for r in TextTask(n_prompts=6, n_candidates=6, seed=0).sample_pairs(8, seed=0)})


def _model():
    return tiny_gpt(len(TOKENIZER), n_layer=1, n_head=2, n_embd=32, n_positions=64, seed=0)


def _other_models_data(pairs_per_prompt=4, seed=1) -> PreferenceDataset:
    """Responses that no model here wrote: random strings of the task's words, random 0/1 labels."""
    rng = np.random.default_rng(seed)
    words = vocabulary()[:40]

    def text():
        return " ".join(rng.choice(words, size=rng.integers(4, 9)))

    return PreferenceDataset.from_records([
        {"prompt": p, "response_a": text(), "response_b": text(),
         "labels": {"help": float(rng.integers(2)), "harm": float(rng.integers(2))}}
        for p in PROMPTS for _ in range(pairs_per_prompt)])


def _sequence_kl(policy, start, n=64) -> float:
    """KL(policy || start) in nats per response, as the mean log-ratio log pi - log pi_start over
    n fresh samples per prompt (another estimator than the trainer's per-token KL)."""
    responses, finished = sample(policy, TOKENIZER, PROMPTS, n, 16, 1.0, 12345, return_finished=True)
    batch = encode_rows(TOKENIZER, [p for p in PROMPTS for _ in range(n)], responses, finished)
    logp, logq, _ = policy_reference_scores(policy, start, *batch)
    return float((logp - logq).mean())


def test_one_label_reads_through_the_prior():
    data = PreferenceDataset.from_records([{"prompt": "p", "response_a": "a", "response_b": "b",
                                            "labels": {"help": 1.0, "harm": 0.0}}])
    raw, smoothed = response_win_rates(data)["p"], response_win_rates(data, prior=1.0)["p"]
    np.testing.assert_allclose(raw.win_rates.numpy(), [[1, 0], [0, 1]])
    np.testing.assert_allclose(smoothed.win_rates.numpy(), [[0.75, 0.25], [0.25, 0.75]])  # (1 + 1/2) / 2
    with pytest.raises(ValueError, match="win_rate_prior"):
        TrainConfig(win_rate_prior=-1.0).validate(2)


@pytest.mark.parametrize("tau", [1.0, 0.25])
def test_kl_to_the_start_stays_within_what_tau_allows_on_another_models_data(tau):
    """Threshold 0 keeps lambda at 0, so the budget is 1 / tau nats per response. Without the leash,
    cloning another model's responses moves the policy more than five budgets from the start."""
    data = _other_models_data()
    budget = 1.0 / tau
    kls = {}
    for leash in (False, True):
        policy = _model()
        config = TrainConfig(method="mopo", thresholds=(0.0,), tau=tau, steps=60, batch_size=len(PROMPTS), lr=1e-2,
                             kl_leash=leash)
        result = Trainer(policy, TOKENIZER, data, config).train()
        kls[leash] = _sequence_kl(policy, _model())
        assert all(h["lambda_1"] == 0 for h in result.history)
    assert kls[False] > 5 * budget  # the hazard is real here
    assert 0 < kls[True] <= 1.25 * budget, kls  # the controller ends within a quarter of its budget
    checks = [h for h in result.history if "kl_budget" in h]
    assert len(checks) > 60 // LEASH_CHECK_EVERY and all(h["kl_budget"] == pytest.approx(budget) for h in checks)


def test_the_lagged_reference_enters_relative_to_the_start_without_a_jump():
    """With one batch of every prompt and a tiny learning rate, the loss and ESS move smoothly across
    the refreshes at steps 4 and 6, and each row's base measure is log pi_lag - log pi_start, not the
    absolute log pi_lag (which differs by more than ten nats between responses here)."""
    data = _other_models_data(pairs_per_prompt=3)
    config = TrainConfig(method="mopo", thresholds=(0.0,), tau=1.0, steps=8, batch_size=len(PROMPTS), lr=1e-4,
                         t0=2, kl_leash=False)
    trainer = Trainer(_model(), TOKENIZER, data, config)
    result = trainer.train()
    assert trainer.lagged
    for name in ("loss", "ess"):
        series = np.array([h[name] for h in result.history])
        assert np.abs(np.diff(series)).max() <= 1e-2 * np.abs(series).max(), (name, series)

    prompts = list(trainer.responses)
    tables = [trainer.responses[p] for p in prompts]
    rows = [(p, r) for p, t in zip(prompts, tables) for r in t.responses]
    lag = trainer._eval_logprobs(trainer.reference, [p for p, _ in rows], [r for _, r in rows])
    start = trainer._eval_logprobs(_model(), [p for p, _ in rows], [r for _, r in rows])
    counts = np.concatenate([t.counts.numpy() for t in tables])
    np.testing.assert_allclose(trainer._offline_base_measure(prompts, tables).numpy(),
                               np.log(counts) + lag - start, atol=1e-5)
    # the rows moved by under a nat, while their absolute log-probs span more than ten
    assert np.abs(lag - start).max() < 1.0 and np.ptp(start) > 10.0


def test_the_ratchet_follows_a_windows_mean_not_one_batch():
    data = _other_models_data(pairs_per_prompt=2)
    config = TrainConfig(method="mopo", thresholds=(0.1,), steps=4, batch_size=2, t0=2, beta_ratchet=0.9,
                         kl_leash=False)
    trainer = Trainer(_model(), TOKENIZER, data, config)
    result = trainer.train()
    estimates = [h["constraint_1"] for h in result.history]
    expected = max(0.1, 0.9 * np.mean(estimates[:2]))  # at step 4: the window of steps 1-2
    assert float(trainer.thresholds[0]) == pytest.approx(expected)
    assert np.std(estimates[:2]) > 0  # the mean differs from either single batch


def test_the_leash_checks_every_few_steps_pulls_every_step_and_survives_a_checkpoint(tmp_path):
    data = _other_models_data(pairs_per_prompt=2)
    config = TrainConfig(method="mopo", thresholds=(0.0,), tau=4.0, steps=10, batch_size=3, lr=1e-2,
                         checkpoint_every=7)
    full = Trainer(_model(), TOKENIZER, data, config, checkpoint_dir=tmp_path / "full").train()
    checked = [h["step"] for h in full.history if "kl_multiplier" in h]
    # kappa is 0 after step 1's check (the start is the policy), the next check at 1 + LEASH_CHECK_EVERY finds
    # the policy past its 0.25-nat budget, and from then on the leash is taken (and pulls) every step
    assert checked == [1, *range(1 + LEASH_CHECK_EVERY, 11)] and full.history[1 + LEASH_CHECK_EVERY - 1]["kl_multiplier"] > 0
    first = Trainer(_model(), TOKENIZER, data, config, checkpoint_dir=tmp_path / "cut")
    first.callbacks = (lambda step, metrics: first.request_cancel() if step == 7 else None,)
    first.train()
    tail = Trainer(_model(), TOKENIZER, data, config, checkpoint_dir=tmp_path / "cut").train(resume_run_id=0).history
    for a, b in zip(full.history[7:], tail, strict=True):
        assert b["kl_multiplier"] == pytest.approx(a["kl_multiplier"]) and b["loss"] == pytest.approx(a["loss"])


def test_the_leash_gradient_is_the_kl_gradient():
    """The leash rows' loss is kappa * the per-token KL, with gradient through the policy only."""
    policy, start = _model(), _model()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = encode_rows(TOKENIZER, PROMPTS[:2], ["help me", "rest and sleep"])
    from mopo_core.lm.losses import per_token_kl

    kl = per_token_kl(policy, start, *batch)
    kl.sum().backward()
    assert all(p.grad is None for p in start.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())
    np.testing.assert_allclose(kl.detach().numpy(), policy_reference_scores(policy, start, *batch)[2].numpy())


@pytest.mark.parametrize("config, copies", [
    (TrainConfig(method="mopo"), 1), (TrainConfig(method="mopo", kl_leash=False), 0),
    (TrainConfig(method="mopo", t0=3), 2), (TrainConfig(method="mopo", online=True), 1),
    (TrainConfig(method="dpo"), 1), (TrainConfig(method="sft"), 0),
    (TrainConfig(method="sft", kl_every=5), 1)])
def test_frozen_copies_counts_what_the_trainer_holds(config, copies):
    from mopo_core.lm.config import frozen_copies

    data = _other_models_data(pairs_per_prompt=1)
    trainer = Trainer(_model(), TOKENIZER, data, config, oracle=lambda prompt, a, b: np.array([0.5, 0.5]))
    held = {id(m) for m in (trainer.reference, trainer.start) if m is not None}
    assert frozen_copies(config) == copies == len(held)
