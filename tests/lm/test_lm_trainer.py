"""The LM trainer on a tiny GPT and the synthetic text task: MOPO's multipliers react to the
thresholds, resume reproduces an uninterrupted run, cancel leaves a consistent store."""
import numpy as np
import pytest
import torch

from mopo_core.lm.config import TrainConfig
from mopo_core.lm.trainer import Trainer, encode_rows
from mopo_core.lm.models import tiny_gpt, word_tokenizer
from mopo_core.data.preferences import PreferenceDataset
from mopo_core.runs import RunStore
from tests.lm_fixtures import TabularLM
from synthetic.text_task import TextTask, vocabulary


@pytest.fixture(scope="module")
def task_data():
    task = TextTask(n_prompts=6, n_candidates=6, seed=0)
    records = [r for r in task.sample_pairs(8, seed=0) if r["response_a"] != r["response_b"]]
    return PreferenceDataset.from_records(records), word_tokenizer(vocabulary())


def _model(tokenizer, seed=0):
    return tiny_gpt(len(tokenizer), n_layer=1, n_head=2, n_embd=32, n_positions=64, seed=seed)


def test_encode_rows_marks_response_tokens_only(task_data):
    _, tok = task_data
    ids, attention, response = encode_rows(tok, ["how do i cook"], ["use salt"])
    n_prompt = len(tok("how do i cook", add_special_tokens=False)["input_ids"]) + (tok.bos_token_id is not None)
    n_response = len(tok("use salt", add_special_tokens=False)["input_ids"]) + 1  # + eos
    assert attention.sum() == n_prompt + n_response
    assert response[0, :n_prompt].sum() == 0 and response.sum() == n_response


def test_mopo_multiplier_rises_for_an_unmet_threshold_and_runs_are_recorded(task_data, tmp_path):
    data, tok = task_data
    store = RunStore(tmp_path / "runs.sqlite")
    config = TrainConfig(method="mopo", thresholds=(0.95,), steps=12, batch_size=4, lambda_lr=2.0)
    result = Trainer(_model(tok), tok, data, config, store=store).train()
    assert result.status == "finished" and result.multipliers[0] > 0
    run = store.get_run(result.run_id)
    assert run.status == "finished" and run.kind == "train"
    names = set(run.metrics.name)
    assert {"loss", "lambda_1", "constraint_1", "threshold_1", "ess", "tokens_per_s"} <= names
    lam = run.metrics[run.metrics.name == "lambda_1"].value.to_numpy()
    assert len(lam) == 12 and (lam > 0).all()  # 0.95 is never met at lambda = 0 on this data
    slack = TrainConfig(method="mopo", thresholds=(0.0,), steps=5, batch_size=4)
    assert Trainer(_model(tok), tok, data, slack).train().multipliers == [0.0]


def test_resume_after_cancel_reproduces_the_uninterrupted_run(task_data, tmp_path):
    data, tok = task_data
    config = TrainConfig(method="mopo", thresholds=(0.8,), steps=10, batch_size=4, checkpoint_every=3)
    full = Trainer(_model(tok), tok, data, config, checkpoint_dir=tmp_path / "full").train()

    store = RunStore(tmp_path / "runs.sqlite")
    first = Trainer(_model(tok), tok, data, config, store=store, checkpoint_dir=tmp_path / "resumed")
    first.callbacks = (lambda step, metrics: first.request_cancel() if step == 6 else None,)
    cancelled = first.train()
    assert cancelled.status == "cancelled" and cancelled.step == 6
    assert store.get_status(cancelled.run_id) == "cancelled"
    assert (tmp_path / "resumed" / "last.pt").exists()
    assert store.get_run(cancelled.run_id).metrics.step.max() == 6

    second = Trainer(_model(tok, seed=123), tok, data, config, store=store, checkpoint_dir=tmp_path / "resumed")
    resumed = second.train(resume_run_id=cancelled.run_id)
    assert resumed.status == "finished" and store.get_status(cancelled.run_id) == "finished"
    tail = [h for h in full.history if h["step"] > 6]
    for a, b in zip(tail, resumed.history):
        assert a["step"] == b["step"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["lambda_1"] == pytest.approx(b["lambda_1"], abs=1e-9)
    np.testing.assert_allclose(full.multipliers, resumed.multipliers, atol=1e-9)


@pytest.mark.parametrize("method", ["dpo", "ipo", "sft"])
def test_baselines_run_on_the_same_loop(task_data, method):
    data, tok = task_data
    result = Trainer(_model(tok), tok, data, TrainConfig(method=method, steps=3, batch_size=4)).train()
    assert result.status == "finished" and all(np.isfinite(h["loss"]) for h in result.history)


def test_dpo_reference_is_frozen_and_starts_at_log2(task_data):
    data, tok = task_data
    trainer = Trainer(_model(tok), tok, data, TrainConfig(method="dpo", steps=1, batch_size=4))
    result = trainer.train()
    # at step 1 the policy equals the reference: every DPO loss term is log 2 (hard labels)
    assert result.history[0]["loss"] == pytest.approx(np.log(2.0), abs=1e-5)
    assert not any(p.requires_grad for p in trainer.reference.parameters())


def test_the_concatenated_pair_forward_gives_each_sides_own_log_probs(task_data):
    """A DPO step scores a and b in one padded forward; its gradient equals that of the loss built
    from each response scored alone (unpadded) against a reference that differs from the policy."""
    from mopo_core.lm.losses import sequence_logprobs, weighted_dpo_loss

    data, tok = task_data
    config = TrainConfig(method="dpo", steps=1, batch_size=4)
    trainer = Trainer(_model(tok), tok, data, config)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    plan = trainer._plan_dpo()
    pairs = plan.rows
    trainer.model.eval()  # no dropout: both computations see the same function
    trainer.model.zero_grad()
    plan.loss_sum(pairs)[0].backward()
    together = [p.grad.clone() for p in trainer.model.parameters()]

    def alone(model, response):
        return torch.stack([sequence_logprobs(model, *encode_rows(tok, [p.prompt], [response(p)]))[0]
                            for p in pairs])

    trainer.model.zero_grad()
    with torch.no_grad():
        ref = [alone(trainer.reference, lambda p: p.response_a), alone(trainer.reference, lambda p: p.response_b)]
    labels = torch.tensor([p.labels[0] for p in pairs], dtype=torch.float32)
    (weighted_dpo_loss(alone(trainer.model, lambda p: p.response_a), alone(trainer.model, lambda p: p.response_b),
                       *ref, config.tau, labels) * len(pairs)).backward()
    for a, b in zip(together, (p.grad for p in trainer.model.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("override, message", [
    (dict(method="ppo"), "method: expected one of"),
    (dict(thresholds=(0.5, 0.5)), "thresholds: MOPO needs one per secondary objective"),
    (dict(steps=0), "steps: must be >= 1"),
    (dict(tau=0.0), "tau: must be > 0"),
    (dict(beta_ratchet=0.9), "beta_ratchet: needs t0"),
])
def test_bad_config_names_the_field(task_data, override, message):
    data, tok = task_data
    with pytest.raises(ValueError, match=message):
        Trainer(_model(tok), tok, data, TrainConfig(**override))


def test_resume_needs_a_checkpoint(task_data, tmp_path):
    data, tok = task_data
    with pytest.raises(ValueError, match=f"run 1: no checkpoint at {tmp_path / 'last.pt'}"):
        Trainer(_model(tok), tok, data, TrainConfig(steps=2), checkpoint_dir=tmp_path).train(resume_run_id=1)
    with pytest.raises(ValueError, match="run 1: the trainer has no checkpoint folder to resume from"):
        Trainer(_model(tok), tok, data, TrainConfig(steps=2)).train(resume_run_id=1)


def test_ratchet_never_lowers_thresholds_below_the_users(task_data):
    data, tok = task_data
    config = TrainConfig(method="mopo", thresholds=(0.2,), steps=8, batch_size=4, t0=2, beta_ratchet=0.99)
    result = Trainer(_model(tok), tok, data, config).train()
    assert all(h["threshold_1"] >= 0.2 for h in result.history)
    assert max(h["threshold_1"] for h in result.history) > 0.2
    torch.manual_seed(0)


def test_evaluating_a_policy_against_itself_gives_win_rate_one_half(task_data):
    from mopo_core.lm.evaluation import evaluate_policy
    from synthetic.text_task import preference, score

    data, tok = task_data
    model = _model(tok)
    objectives = data.objectives
    oracle = lambda p, a, b: np.array([preference(p, a, b, k, 0.1) for k in objectives])  # noqa: E731
    result = evaluate_policy(model, model, tok, data.prompts()[:3], oracle, lambda p, r: score(p, r, objectives),
                             objectives, n_samples=4, max_new_tokens=6)
    np.testing.assert_allclose(result.win_rates, 0.5, atol=1e-12)
    np.testing.assert_allclose(result.mean_scores, result.reference_scores)
    point = result.as_point("reference", {})
    assert point["values"] == [0.5, 0.5]


def test_with_exact_win_rates_the_trainer_reaches_the_exact_tabular_solution():
    from mopo_core.tabular.solver import solve_scores
    from synthetic import make_structure

    m_count, n = 2, 4
    s = make_structure("bt_conflict", n_responses=n, n_prompts=m_count, seed=3)
    tok = word_tokenizer([f"p{m}" for m in range(m_count)] + [f"r{i}" for i in range(n)])
    records = [{"prompt": f"p{m}", "response_a": f"r{a}", "response_b": f"r{b}",
                "labels": {name: float(s.preferences[k, m, a, b]) for k, name in enumerate(s.objective_names)}}
               for m in range(m_count) for a in range(n) for b in range(n) if a != b]
    data = PreferenceDataset.from_records(records)
    # the data's estimate: win-rate against the other responses (self-comparison excluded), each
    # response in 2 (n - 1) comparisons, with the default prior of one comparison at 1/2
    others = (s.preferences.sum(axis=-1) - 0.5) / (n - 1)  # (K, M, N)
    prior = TrainConfig().win_rate_prior
    others = (2 * (n - 1) * others + prior / 2) / (2 * (n - 1) + prior)
    tau, threshold = 0.5, float(np.mean(others[1].max(axis=1)) - 0.08)
    exact = solve_scores(others[0], others[1:], [threshold], tau, np.full((m_count, n), 1 / n), np.full(m_count, 0.5))
    assert exact.feasible and exact.multipliers[0] > 0

    model = TabularLM(tok, m_count, n)
    config = TrainConfig(method="mopo", thresholds=(threshold,), tau=tau, steps=1500, batch_size=m_count,
                         lr=0.05, lambda_lr=0.5)
    result = Trainer(model, tok, data, config).train()
    policy = torch.softmax(model.theta, dim=1).detach().numpy()
    np.testing.assert_allclose(result.multipliers, exact.multipliers, atol=1e-3)
    np.testing.assert_allclose(policy, exact.policy, atol=2e-3)
    # the leash never pulled: this exact solution is within what tau allows (KL <= log 4 < 1/tau)
    checks = [h for h in result.history if "kl_budget" in h]  # every LEASH_CHECK_EVERY steps while kappa = 0
    assert len(checks) == 300 and all(h["kl_multiplier"] == 0 and h["kl_to_start"] <= h["kl_budget"] for h in checks)


def test_cli_train_records_a_run_with_an_evaluated_point(tmp_path, monkeypatch, capsys):
    import json

    from mopo_core.cli.main import main

    store_path = tmp_path / "runs.sqlite"
    monkeypatch.setenv("MOPO_STORE", str(store_path))
    args = ["train", "--method", "mopo", "--threshold", "0.6", "--steps", "4", "--batch-size", "4",
            "--n-prompts", "10", "--sft-steps", "20", "--checkpoint-dir", str(tmp_path / "ck"), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "finished" and len(out["points"][0]["values"]) == 2
    run = RunStore(store_path).get_run(out["run_id"])
    assert run.kind == "train" and run.status == "finished" and len(run.points) == 1
    assert run.config["task"] == "text" and run.config["checkpoint_dir"].endswith("ck")
    assert (tmp_path / "ck" / "last.pt").exists()


def test_weighted_dpo_runs_and_validates_its_weights(task_data):
    data, tok = task_data
    config = TrainConfig(method="weighted_dpo", objective_weights=(0.7, 0.3), steps=2, batch_size=4)
    result = Trainer(_model(tok), tok, data, config).train()
    assert result.history[0]["loss"] == pytest.approx(np.log(2.0), abs=1e-5)  # policy = reference at step 1
    with pytest.raises(ValueError, match="objective_weights: weighted_dpo needs 2"):
        Trainer(_model(tok), tok, data, TrainConfig(method="weighted_dpo", objective_weights=(0.5, 0.6)))


def test_soup_interpolates_weights_exactly(task_data):
    from mopo_core.lm.soups import interpolate_state_dicts, soup

    _, tok = task_data
    a, b = _model(tok, seed=1), _model(tok, seed=2)
    mixed = soup([a, b], [0.25, 0.75])
    for (name, pa), pb, pm in zip(a.state_dict().items(), b.state_dict().values(), mixed.state_dict().values()):
        if pa.is_floating_point():
            torch.testing.assert_close(pm, 0.25 * pa + 0.75 * pb, rtol=0, atol=1e-6)
    torch.testing.assert_close(soup([a, b], [1.0, 0.0]).state_dict(), a.state_dict())
    with pytest.raises(ValueError, match="weights: must be non-negative and sum to 1"):
        soup([a, b], [0.5, 0.6])
    bigger = tiny_gpt(len(tok), n_layer=1, n_head=2, n_embd=64, n_positions=64)
    with pytest.raises(ValueError, match=r"state_dicts\[1\]: .* has shape"):
        interpolate_state_dicts([a.state_dict(), bigger.state_dict()], [0.5, 0.5])
