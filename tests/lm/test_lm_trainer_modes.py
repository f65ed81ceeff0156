"""The trainer's other modes: online MOPO (pool win-rates, importance factors, KL), MODPO's
margin, sampled KL logging, the lagged reference, and the DPO implicit reward."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mopo_core.lm.losses import policy_reference_scores, weighted_dpo_loss
from mopo_core.lm.config import TrainConfig
from mopo_core.lm.trainer import (
    Trainer,
    implicit_rewards,
    pool_preferences,
    pool_win_rates,
)
from mopo_core.lm.models import tiny_gpt, word_tokenizer
from mopo_core.data.preferences import PreferenceDataset
from synthetic.text_task import TextTask, preference, vocabulary


@pytest.fixture(scope="module")
def setting():
    task = TextTask(n_prompts=6, n_candidates=6, seed=0)
    records = [r for r in task.sample_pairs(8, seed=0) if r["response_a"] != r["response_b"]]
    data = PreferenceDataset.from_records(records)

    def oracle(prompt, a, b):
        return np.array([preference(prompt, a, b, k, task.temperature) for k in task.objectives])

    return data, word_tokenizer(vocabulary()), oracle


def _model(tokenizer, seed=0):
    return tiny_gpt(len(tokenizer), n_layer=1, n_head=2, n_embd=32, n_positions=64, seed=seed)


# ------------------------------------------------------------------------ pool win-rates


def test_pool_win_rates_by_hand():
    p = np.array([[[0.5, 0.9, 0.6], [0.1, 0.5, 0.3], [0.4, 0.7, 0.5]]])  # (1, 3, 3), P + P^T = 1
    np.testing.assert_allclose(pool_win_rates(p), [[0.75, 0.2, 0.55]])  # mean over the other two
    r = np.array([1.0, 2.0, 3.0])
    expected = [(2 * 0.9 + 3 * 0.6) / 5, (1 * 0.1 + 3 * 0.3) / 4, (1 * 0.4 + 2 * 0.7) / 3]
    np.testing.assert_allclose(pool_win_rates(p, np.log(r)), [expected])
    np.testing.assert_allclose(pool_win_rates(p, np.log(r) + 700.0), [expected])  # shift-invariant, no overflow
    with pytest.raises(ValueError, match="preferences: expected"):
        pool_win_rates(np.zeros((1, 1, 1)))


def test_pool_preferences_scores_each_pair_once_and_is_complementary():
    calls = []

    def oracle(prompt, a, b):
        calls.append((a, b))
        return np.array([float(len(a) > len(b)), 0.25])

    p = pool_preferences(oracle, "x", ["a", "bb", "ccc"])
    assert len(calls) == 3 and p.shape == (2, 3, 3)
    np.testing.assert_allclose(p + p.transpose(0, 2, 1), 1.0)
    assert p[0, 2, 0] == 1.0 and p[1, 0, 1] == 0.25 and p[1, 1, 0] == 0.75


# ------------------------------------------------------------------------ online MOPO


def test_online_mopo_starts_with_plain_pool_averages_and_zero_kl(setting):
    data, tok, oracle = setting
    config = TrainConfig(method="mopo", thresholds=(0.9,), online=True, n_candidates=4, steps=1, batch_size=3,
                         max_new_tokens=8)
    trainer = Trainer(_model(tok), tok, data, config, oracle=oracle)
    trainer.step = 1
    pool = trainer._pool(0, data.prompts()[0])
    np.testing.assert_allclose(pool["log_ratio"], 0.0, atol=1e-6)  # policy = reference at the start
    np.testing.assert_allclose(pool["win_rates"], pool_win_rates(pool_preferences(oracle, data.prompts()[0],
                                                                                  pool["responses"])), atol=1e-6)
    assert pool["kl"] == pytest.approx(0.0, abs=1e-6)


def test_online_samples_cut_at_the_token_budget_are_scored_as_prefixes(setting):
    from mopo_core.lm.trainer import encode_rows
    from mopo_core.lm.models import sample

    data, tok, oracle = setting
    pair = next(iter(data))
    prompt = pair.prompt
    ids, attention, mask = encode_rows(tok, [prompt, prompt], [pair.response_a] * 2, finished=[True, False])
    assert attention[0].sum() == attention[1].sum() + 1 and mask[0].sum() == mask[1].sum() + 1  # no eos on row 2
    assert ids[0, int(attention[0].sum()) - 1] == tok.eos_token_id

    model = _model(tok)
    texts, finished = sample(model, tok, [prompt], 6, 2, 1.0, 0, return_finished=True)
    assert texts == sample(model, tok, [prompt], 6, 2, 1.0, 0) and not all(finished)  # an untrained model rarely stops
    config = TrainConfig(method="mopo", thresholds=(0.6,), online=True, n_candidates=6, steps=1, batch_size=1,
                         max_new_tokens=2)
    trainer = Trainer(model, tok, data, config, oracle=oracle)
    trainer.step = 1
    pool = trainer._pool(0, prompt)
    assert len(pool["finished"]) == 6 and not all(pool["finished"])
    repeated = [prompt] * 6
    policy = trainer._eval_logprobs(trainer.model, repeated, pool["responses"], pool["finished"])
    whole = trainer._eval_logprobs(trainer.model, repeated, pool["responses"])
    cut = ~np.array(pool["finished"])
    assert np.all(policy[cut] > whole[cut]) and np.allclose(policy[~cut], whole[~cut])  # no eos term for prefixes
    np.testing.assert_allclose(pool["log_ratio"], 0.0, atol=1e-6)  # policy = reference at the start


def test_online_mopo_trains_logs_kl_and_resumes_exactly(setting, tmp_path):
    data, tok, oracle = setting
    config = TrainConfig(method="mopo", thresholds=(0.95,), online=True, n_candidates=4, steps=6, batch_size=3,
                         max_new_tokens=8, checkpoint_every=3, lr=5e-3)
    full = Trainer(_model(tok), tok, data, config, oracle=oracle, checkpoint_dir=tmp_path / "full").train()
    assert full.status == "finished" and full.multipliers[0] > 0  # 0.95 is out of reach
    assert all({"kl_to_reference", "sample_s", "constraint_1", "ess"} <= set(h) for h in full.history)
    assert full.history[0]["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)
    assert full.history[-1]["kl_to_reference"] > 0  # the policy has moved

    first = Trainer(_model(tok), tok, data, config, oracle=oracle, checkpoint_dir=tmp_path / "cut")
    first.callbacks = (lambda step, metrics: first.request_cancel() if step == 3 else None,)
    assert first.train().status == "cancelled"
    # the trainer's reference is the model it is given: a resume starts from the same starting model
    resumed = Trainer(_model(tok), tok, data, config, oracle=oracle, checkpoint_dir=tmp_path / "cut")
    tail = resumed.train(resume_run_id=0).history
    for a, b in zip(full.history[3:], tail):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["lambda_1"] == pytest.approx(b["lambda_1"])


def test_online_mode_needs_an_oracle_and_mopo(setting):
    data, tok, oracle = setting
    with pytest.raises(ValueError, match="oracle: online mode needs"):
        Trainer(_model(tok), tok, data, TrainConfig(online=True))
    with pytest.raises(ValueError, match="online: only MOPO"):
        Trainer(_model(tok), tok, data, TrainConfig(method="dpo", online=True), oracle=oracle)


# ------------------------------------------------------------------------ MODPO


def test_modpo_loss_is_dpo_with_rescaled_beta_and_the_weighted_margin():
    la, lb = torch.tensor([-3.0, -2.0]), torch.tensor([-2.5, -4.0])
    ra, rb = torch.tensor([-2.8, -2.2]), torch.tensor([-2.6, -3.5])
    labels, beta, margin = torch.tensor([1.0, 0.3]), 0.5, torch.tensor([0.2, -0.1])
    z = beta * ((la - ra) - (lb - rb)) - margin
    by_hand = -(labels * torch.log(torch.sigmoid(z)) + (1 - labels) * torch.log(torch.sigmoid(-z))).mean()
    assert float(weighted_dpo_loss(la, lb, ra, rb, beta, labels, margin=margin)) == pytest.approx(float(by_hand))


def test_modpo_with_zero_secondary_weight_is_dpo_and_the_margin_moves_it(setting):
    data, tok, _ = setting
    zero = lambda prompts, responses: np.zeros((1, len(prompts)))  # noqa: E731
    dpo = Trainer(_model(tok), tok, data, TrainConfig(method="dpo", steps=3, batch_size=4)).train()
    modpo = Trainer(_model(tok), tok, data, TrainConfig(method="modpo", objective_weights=(1.0, 0.0), steps=3,
                                                        batch_size=4), secondary_rewards=zero).train()
    for a, b in zip(dpo.history, modpo.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    lengthy = lambda prompts, responses: np.array([[float(len(r.split())) for r in responses]])  # noqa: E731
    moved = Trainer(_model(tok), tok, data, TrainConfig(method="modpo", objective_weights=(0.5, 0.5), steps=1,
                                                        batch_size=4), secondary_rewards=lengthy).train()
    assert moved.history[0]["loss"] != pytest.approx(np.log(2.0), abs=1e-4)  # the margin shifts it off log 2
    with pytest.raises(ValueError, match="secondary_rewards: modpo needs"):
        Trainer(_model(tok), tok, data, TrainConfig(method="modpo", objective_weights=(0.5, 0.5)))


def test_implicit_reward_is_tau_times_the_log_ratio(setting):
    data, tok, _ = setting
    reference, other = _model(tok), _model(tok, seed=1)
    prompts, responses = data.prompts()[:2], [data[0].response_a, data[1].response_b]
    same = implicit_rewards([reference], reference, tok, 0.1)(prompts, responses)
    np.testing.assert_allclose(same, 0.0, atol=1e-12)
    reward = implicit_rewards([other], reference, tok, 0.1)(prompts, responses)
    trainer = Trainer(other, tok, data, TrainConfig(method="sft"))
    expected = 0.1 * (trainer._eval_logprobs(other, prompts, responses)
                      - trainer._eval_logprobs(reference, prompts, responses))
    assert reward.shape == (1, 2)
    np.testing.assert_allclose(reward[0], expected, rtol=1e-6)


# ------------------------------------------------------------------------ KL, lagged reference


def test_sampled_kl_is_logged_and_starts_at_zero(setting):
    data, tok, _ = setting
    config = TrainConfig(method="dpo", steps=4, batch_size=4, kl_every=2, lr=1e-2)
    trainer = Trainer(_model(tok), tok, data, config)
    assert trainer._sampled_kl() == pytest.approx(0.0, abs=1e-6)
    history = trainer.train().history
    logged = [h for h in history if "kl_to_reference" in h]
    assert [h["step"] for h in logged] == [2, 4] and logged[-1]["kl_to_reference"] > 0


class _PlainLM(torch.nn.Module):
    """A causal LM seen only through its logits (no body/head split): the plain path."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **inputs):
        return SimpleNamespace(logits=self.model(**inputs).logits)


def test_per_token_kl_is_never_negative_and_its_mean_is_the_enumerated_sequence_kl():
    """Vocabulary of 7 (eos = 1), a prompt, at most 2 new tokens: every response is [eos] or
    [a, b] (a != eos; [a, b] with b != eos is cut at the budget), so the sequence KL of the
    policy to the reference is a finite sum, computed here from the models' next-token
    distributions alone. The policy is far from the reference (other weights, sharpened)."""
    eos, prompt, vocab = 1, [0, 2, 3], 7
    reference = tiny_gpt(vocab, n_layer=1, n_head=2, n_embd=16, seed=0).double().eval()
    policy = tiny_gpt(vocab, n_layer=1, n_head=2, n_embd=16, seed=1).double().eval()
    with torch.no_grad():
        policy.transformer.wte.weight.mul_(20.0)  # (tied head) sharper next-token distributions

    def next_token_logprobs(model, prefix):  # float64 (V,)
        with torch.no_grad():
            return torch.log_softmax(model(input_ids=torch.tensor([prefix])).logits[0, -1], -1).numpy()

    responses, log_pi, log_rho = [], [], []
    first_pi, first_rho = next_token_logprobs(policy, prompt), next_token_logprobs(reference, prompt)
    responses.append([eos]), log_pi.append(first_pi[eos]), log_rho.append(first_rho[eos])
    for a in range(vocab):
        if a == eos:
            continue
        second_pi, second_rho = next_token_logprobs(policy, prompt + [a]), next_token_logprobs(reference, prompt + [a])
        for b in range(vocab):
            responses.append([a, b])
            log_pi.append(first_pi[a] + second_pi[b])
            log_rho.append(first_rho[a] + second_rho[b])
    log_pi, log_rho = np.array(log_pi), np.array(log_rho)
    pi = np.exp(log_pi)
    assert pi.sum() == pytest.approx(1.0, abs=1e-12)  # the enumeration is the whole distribution
    exact_kl = float(np.sum(pi * (log_pi - log_rho)))
    assert exact_kl > 1.0  # far from the reference

    width = len(prompt) + 2
    ids = torch.zeros((len(responses), width), dtype=torch.long)
    attention = torch.zeros_like(ids)
    response_mask = torch.zeros_like(ids)
    for i, response in enumerate(responses):
        ids[i, : len(prompt) + len(response)] = torch.tensor(prompt + response)
        attention[i, : len(prompt) + len(response)] = 1
        response_mask[i, len(prompt): len(prompt) + len(response)] = 1
    for models, chunk in (((policy, reference), None), ((policy, reference), 3),
                          ((_PlainLM(policy), _PlainLM(reference)), None)):
        logp, ref_logp, kl = (x.numpy() for x in policy_reference_scores(*models, ids, attention, response_mask,
                                                                         chunk_size=chunk))
        np.testing.assert_allclose(logp, log_pi, rtol=0, atol=1e-10)
        np.testing.assert_allclose(ref_logp, log_rho, rtol=0, atol=1e-10)
        assert (kl >= 0).all() and ((logp - ref_logp) < 0).any()  # single log-ratios can be negative
        assert float(np.sum(pi * kl)) == pytest.approx(exact_kl, rel=1e-10)  # unbiased


def test_lagged_reference_moves_every_t0_steps_and_resumes_exactly(setting, tmp_path):
    data, tok, _ = setting
    config = TrainConfig(method="mopo", thresholds=(0.7,), steps=7, batch_size=4, t0=2, lr=1e-2, checkpoint_every=5)
    trainer = Trainer(_model(tok), tok, data, config, checkpoint_dir=tmp_path / "full")
    start = {k: v.clone() for k, v in trainer.reference.state_dict().items()}
    full = trainer.train()
    assert trainer.lagged  # refreshed at step 4 to the policy of step 2, at step 6 to that of step 4
    moved = trainer.reference.state_dict()
    assert any(not torch.equal(start[k], moved[k]) for k in start)
    assert any(not torch.equal(moved[k], trainer.model.state_dict()[k]) for k in moved)

    first = Trainer(_model(tok), tok, data, config, checkpoint_dir=tmp_path / "cut")
    first.callbacks = (lambda step, metrics: first.request_cancel() if step == 5 else None,)
    first.train()
    tail = Trainer(_model(tok), tok, data, config, checkpoint_dir=tmp_path / "cut").train(resume_run_id=0).history
    for a, b in zip(full.history[5:], tail):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["ess"] == pytest.approx(b["ess"])


# ------------------------------------------------------------------------ robust constraints (eps)


def test_robust_constraints_tighten_the_estimate_follow_chi_and_resume_exactly(setting, tmp_path):
    """The step-1 estimate is the dual value at chi after one ascent step from 1 (checked against
    lm_losses on the same batch), below the plain estimate; chi converges to the exact bound's
    optimum on a fixed batch; the run resumes with chi from the checkpoint."""
    from mopo_core.lm.losses import chi_update, mopo_weights, robust_constraint_estimates, robust_lower_bounds

    data, tok, _ = setting
    plain = TrainConfig(method="mopo", thresholds=(0.6,), steps=6, batch_size=4, lr=1e-2, checkpoint_every=3)
    robust = TrainConfig(**{**plain.__dict__, "eps": 0.1})
    base = Trainer(_model(tok), tok, data, plain).train().history
    trainer = Trainer(_model(tok), tok, data, robust, checkpoint_dir=tmp_path / "full")
    full = trainer.train().history
    assert all("chi_1" in h and h["chi_1"] > 0 for h in full) and "chi_1" not in base[0]
    assert full[0]["constraint_1"] < base[0]["constraint_1"]  # same batch and lambda = 0: the worst case is lower
    assert full[0]["lambda_1"] >= base[0]["lambda_1"]

    # step 1 by hand: the batch's rows, weights at lambda = 0, one chi step from 1, the dual there
    first = Trainer(_model(tok), tok, data, robust)
    first.step = 1
    prompts = first._batch_prompts()
    tables = [first.responses[p] for p in prompts]
    w = torch.cat([t.win_rates for t in tables], dim=1)
    group = torch.tensor([i for i, t in enumerate(tables) for _ in t.responses])
    log_counts = torch.cat([t.counts.log() for t in tables])
    weights, _ = mopo_weights(w, torch.zeros(1), robust.tau, group, log_counts)
    chi = chi_update(torch.ones(1), w[1:], weights, group, 0.1, robust.chi_lr, log_counts)
    assert full[0]["chi_1"] == pytest.approx(chi.item())
    estimate = robust_constraint_estimates(chi, w[1:], weights, group, 0.1, log_counts).item()
    assert full[0]["constraint_1"] == pytest.approx(estimate)
    exact, best_chi = robust_lower_bounds(w[1:], weights, group, 0.1, log_counts)
    assert estimate <= exact.item() + 1e-12  # the dual at any chi bounds the worst case from below
    for _ in range(300):  # Algorithm 1's chi steps on this fixed batch reach the exact bound
        chi = chi_update(chi, w[1:], weights, group, 0.1, robust.chi_lr, log_counts)
    assert robust_constraint_estimates(chi, w[1:], weights, group, 0.1, log_counts).item() == pytest.approx(
        exact.item(), abs=1e-6)

    cut = Trainer(_model(tok), tok, data, robust, checkpoint_dir=tmp_path / "cut")
    cut.callbacks = (lambda step, metrics: cut.request_cancel() if step == 3 else None,)
    cut.train()
    tail = Trainer(_model(tok), tok, data, robust, checkpoint_dir=tmp_path / "cut").train(resume_run_id=0).history
    for a, b in zip(full[3:], tail, strict=True):
        assert a["chi_1"] == pytest.approx(b["chi_1"]) and a["loss"] == pytest.approx(b["loss"], abs=1e-6)


def test_eps_is_checked_and_only_mopo_has_it(setting):
    data, tok, _ = setting
    for config, message in [(TrainConfig(eps=-0.1), "eps: must be a finite number >= 0"),
                            (TrainConfig(eps=float("nan")), "eps: must be a finite number >= 0"),
                            (TrainConfig(method="dpo", eps=0.1), "eps: robust constraints are MOPO's"),
                            (TrainConfig(eps=0.1, chi_lr=0.0), "chi_lr")]:
        with pytest.raises(ValueError, match=message):
            Trainer(_model(tok), tok, data, config)


# ------------------------------------------------------------------------ command line


def test_cli_online_train_then_evaluate_reproduces_the_runs_own_point(tmp_path, monkeypatch, capsys):
    import json

    from mopo_core.cli.main import main
    from mopo_core.runs import RunStore

    monkeypatch.setenv("MOPO_STORE", str(tmp_path / "runs.sqlite"))
    args = ["train", "--method", "mopo", "--online", "--n-candidates", "3", "--max-new-tokens", "8",
            "--threshold", "0.6", "--steps", "2", "--batch-size", "3", "--grad-accum", "2", "--n-prompts", "10",
            "--sft-steps", "20", "--checkpoint-dir", str(tmp_path / "ck"), "--json"]
    assert main(args) == 0
    trained = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--run", str(trained["run_id"]), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    # the same checkpoint, rebuilt reference, prompts and seed: the same win-rates
    np.testing.assert_allclose(evaluated["values"], trained["points"][0]["values"], atol=1e-12)
    store = RunStore(tmp_path / "runs.sqlite")
    run = store.get_run(evaluated["run_id"])
    assert run.kind == "evaluate" and run.status == "finished" and run.config["source_run"] == trained["run_id"]
    assert main(["evaluate", "--run", str(trained["run_id"]), "--split", "validation", "--samples", "2"]) == 0
    assert "evaluation of run" in capsys.readouterr().out
    solve = store.create_run("solve", {})
    assert main(["evaluate", "--run", str(solve)]) == 2
    assert "not a train run; only train runs can be evaluated" in capsys.readouterr().err


def test_cli_train_takes_the_robust_radius(tmp_path, monkeypatch, capsys):
    import json

    from mopo_core.cli.main import main
    from mopo_core.runs import RunStore

    monkeypatch.setenv("MOPO_STORE", str(tmp_path / "runs.sqlite"))
    args = ["train", "--eps", "0.15", "--chi-lr", "0.2", "--threshold", "0.6", "--steps", "2", "--batch-size", "3",
            "--n-prompts", "10", "--sft-steps", "20", "--json"]
    assert main(args) == 0
    run = RunStore(tmp_path / "runs.sqlite").get_run(json.loads(capsys.readouterr().out)["run_id"])
    assert (run.config["eps"], run.config["chi_lr"]) == (0.15, 0.2)
    assert (run.metrics.name == "chi_1").sum() == 2
    assert main(["train", "--method", "dpo", "--eps", "0.1", "--steps", "1"]) == 2
    assert "eps: robust constraints are MOPO's" in capsys.readouterr().err


def test_cli_method_choices_are_the_trainers_methods():
    from mopo_core.cli.main import build_parser
    from mopo_core.lm.config import METHODS

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    (method,) = [a for a in train._actions if a.dest == "method"]
    assert tuple(method.choices) == METHODS
