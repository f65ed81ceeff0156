"""The language-model trainer: MOPO (Algorithm 1, offline mode) and baselines on one loop.

Offline mode (MOPO.md section 5). Win-rates come from the dataset's labels: a pair
``(a, b)`` with label ``l_k`` counts ``l_k`` for ``a`` and ``1 - l_k`` for ``b``, and each
response's estimate ``w_k(x, y)`` is the average over every comparison it took part in
("with more comparisons per prompt, average"). A MOPO step draws ``batch_size`` prompts;
their distinct responses are the rows, weighted by how often each appears in the data (the
empirical data distribution, taken to be the reference's). The multipliers take a projected
step on the batch estimate of the constraints, the normalised closed-form weights are
recomputed, and the policy takes a weighted behaviour-cloning step on the response tokens.
MOPO needs no reference forward pass. DPO, IPO and SFT draw ``batch_size`` pairs per step;
DPO and IPO run a frozen copy of the starting model for their reference log-probs.

Runs: the config, metric series (loss, lambda_j, constraint_j, threshold_j, ESS, tokens/s)
and status go to a :class:`mopo_core.runs.RunStore`; a checkpoint (model, optimizer,
multipliers, thresholds, step) is written atomically every ``checkpoint_every`` steps and
at the end. Batches and dropout are seeded by (seed, step), so resuming from a checkpoint
reproduces an uninterrupted run's metrics. ``request_cancel()`` ends the run after the
current step with status ``cancelled`` and its checkpoint kept.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .lm_losses import (
    constraint_estimates,
    ipo_loss,
    lambda_update,
    mopo_weights,
    sequence_logprobs,
    sft_loss,
    weighted_bc_loss,
    weighted_dpo_loss,
)
from .models import pad_token_id, sequence_ids
from .preferences import PreferenceDataset
from .runs import RunStore
from .validation import check_int, check_positive

METHODS = ("mopo", "dpo", "ipo", "weighted_dpo", "sft")
CHECKPOINT_NAME = "last.pt"


@dataclass
class TrainConfig:
    """Settings of one training run.

    method: "mopo" | "dpo" | "ipo" | "weighted_dpo" | "sft"; thresholds (K-1,) for MOPO's
    secondaries; objective_weights (K,) for weighted_dpo (DPO on the weighted mixture of the
    objectives' soft labels, a fixed scalarisation); tau: KL
    strength (beta of DPO/IPO); steps, batch_size (prompts per step for MOPO, pairs per step
    for the others), lr and weight_decay (AdamW), lambda_lr
    (projected step on the multipliers), beta_ratchet with t0: every t0 steps the thresholds
    become max(b_user, beta_ratchet * constraint estimate of t0 steps ago); seed; log_every,
    checkpoint_every (steps).
    """

    method: str = "mopo"
    thresholds: tuple[float, ...] = (0.5,)
    objective_weights: tuple[float, ...] | None = None
    tau: float = 0.08
    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    lambda_lr: float = 1.0
    t0: int | None = None
    beta_ratchet: float | None = None
    seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 25

    def validate(self, n_objectives: int) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        if self.method == "mopo" and len(self.thresholds) != n_objectives - 1:
            raise ValueError(f"thresholds: MOPO needs one per secondary objective ({n_objectives - 1}), "
                             f"got {len(self.thresholds)}")
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            check_int(getattr(self, name), name, 1)
        for name in ("tau", "lr", "lambda_lr"):
            check_positive(getattr(self, name), name)
        if self.method == "weighted_dpo":
            weights = self.objective_weights
            if weights is None or len(weights) != n_objectives or min(weights) < 0 or abs(sum(weights) - 1) > 1e-9:
                raise ValueError(f"objective_weights: weighted_dpo needs {n_objectives} non-negative weights "
                                 f"summing to 1, got {weights}")
        if self.beta_ratchet is not None and (self.t0 is None or not 0 < self.beta_ratchet <= 1):
            raise ValueError(f"beta_ratchet: needs t0 and must lie in (0, 1], got {self.beta_ratchet}, t0={self.t0}")


@dataclass
class TrainResult:
    """Where a run ended: status ("finished" | "cancelled"), last step, multipliers, thresholds
    in force, the run id in the store (None without a store) and the metric history."""

    status: str
    step: int
    multipliers: list[float]
    thresholds: list[float]
    run_id: int | None
    history: list[dict] = field(default_factory=list)


def encode_rows(tokenizer, prompts: list[str], responses: list[str]):
    """Right-padded ``[bos] prompt response [eos]`` rows: (input_ids, attention_mask, response_mask),
    each (B, T); the response mask covers the response tokens and eos."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    prompt_ids = [sequence_ids(tokenizer, p, add_eos=False) for p in prompts]
    response_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] + eos for r in responses]
    rows = [p + r for p, r in zip(prompt_ids, response_ids)]
    width = max(len(r) for r in rows)
    pad = pad_token_id(tokenizer)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    response = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attention[i, : len(p) + len(r)] = 1
        response[i, len(p): len(p) + len(r)] = 1
    return ids, attention, response


@dataclass
class ResponseTable:
    """One prompt's distinct responses with their win-rate estimates (K, R) and how many
    comparisons each took part in (R,)."""

    responses: list[str]
    win_rates: torch.Tensor
    counts: torch.Tensor


def response_win_rates(dataset: PreferenceDataset) -> dict[str, ResponseTable]:
    """Per prompt: each response's average outcome over all its comparisons (as ``a``: the label;
    as ``b``: one minus it), the one-comparison estimates of MOPO.md section 5, averaged."""
    sums: dict[str, dict[str, np.ndarray]] = {}
    counts: dict[str, dict[str, int]] = {}
    for pair in dataset:
        labels = np.asarray(pair.labels, dtype=np.float64)
        for response, outcome in ((pair.response_a, labels), (pair.response_b, 1.0 - labels)):
            by_prompt = sums.setdefault(pair.prompt, {})
            by_prompt[response] = by_prompt.get(response, 0.0) + outcome
            counts.setdefault(pair.prompt, {})[response] = counts.get(pair.prompt, {}).get(response, 0) + 1
    tables = {}
    for prompt, by_response in sums.items():
        names = list(by_response)
        n = np.array([counts[prompt][r] for r in names], dtype=np.float64)
        rates = np.stack([by_response[r] for r in names], axis=1) / n
        tables[prompt] = ResponseTable(names, torch.from_numpy(rates), torch.from_numpy(n))
    return tables


class Trainer:
    """Owns the loop for one run. ``callbacks`` are called as ``callback(step, metrics)``."""

    def __init__(self, model, tokenizer, dataset: PreferenceDataset, config: TrainConfig,
                 store: RunStore | None = None, checkpoint_dir: str | os.PathLike | None = None,
                 callbacks: tuple[Callable[[int, dict], None], ...] = (), run_config: dict | None = None):
        config.validate(dataset.n_objectives)
        clash = set(run_config or {}) & set(asdict(config))
        if clash:
            raise ValueError(f"run_config: keys {sorted(clash)} would overwrite the training config's")
        self.model, self.tokenizer, self.dataset, self.config = model, tokenizer, dataset, config
        self.store, self.callbacks, self.run_config = store, callbacks, run_config or {}
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.AdamW((p for p in model.parameters() if p.requires_grad), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.reference = None
        if config.method in ("dpo", "ipo", "weighted_dpo"):
            self.reference = copy.deepcopy(model).eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)
        self.prompt_ids = {p: i for i, p in enumerate(dataset.prompts())}
        self.responses = response_win_rates(dataset)
        self.lam = torch.zeros(dataset.n_objectives - 1, dtype=torch.float64)
        self.thresholds = torch.tensor(config.thresholds if config.method == "mopo" else [], dtype=torch.float64)
        self.constraint_history: list[torch.Tensor] = []
        self.step = 0
        self.run_id = None
        self._cancel = False

    # ------------------------------------------------------------------ lifecycle

    def request_cancel(self) -> None:
        """End the run after the current step (status ``cancelled``, checkpoint kept)."""
        self._cancel = True

    def train(self, resume_run_id: int | None = None) -> TrainResult:
        """Run to ``config.steps`` (from the last checkpoint when ``resume_run_id`` is given)."""
        if resume_run_id is not None:
            self._load_checkpoint()
            self.run_id = resume_run_id
            if self.store is not None:  # a killed run may have logged steps past its checkpoint
                self.store.delete_metrics_after(resume_run_id, self.step)
                self.store.set_status(resume_run_id, "running")
        elif self.store is not None:
            self.run_id = self.store.create_run("train", {
                **asdict(self.config), **self.run_config, "n_pairs": len(self.dataset),
                "objectives": list(self.dataset.objectives),
                "checkpoint_dir": None if self.checkpoint_dir is None else str(self.checkpoint_dir)})
        history = []
        try:
            while self.step < self.config.steps and not self._cancel:
                self.step += 1
                metrics = self._train_step()
                if self.step % self.config.log_every == 0 or self.step == self.config.steps:
                    history.append({"step": self.step, **metrics})
                    if self.store is not None:
                        self.store.log_metrics(self.run_id, self.step, metrics)
                    for callback in self.callbacks:
                        callback(self.step, metrics)
                if self.step % self.config.checkpoint_every == 0:
                    self._save_checkpoint()
        except BaseException as exc:
            if self.store is not None:
                status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                self.store.set_status(self.run_id, status, f"{type(exc).__name__}: {exc}")
            raise
        self._save_checkpoint()
        status = "cancelled" if self._cancel and self.step < self.config.steps else "finished"
        if self.store is not None:
            self.store.set_status(self.run_id, status)
        return TrainResult(status, self.step, self.lam.tolist(), self.thresholds.tolist(), self.run_id, history)

    # ------------------------------------------------------------------ one step

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, self.step])

    def _batch(self):
        """``batch_size`` pairs for the pairwise methods; ``batch_size`` prompts for MOPO."""
        if self.config.method == "mopo":
            prompts = list(self.responses)
            return [prompts[int(i)] for i in self._rng().choice(len(prompts), size=min(self.config.batch_size,
                                                                                       len(prompts)), replace=False)]
        return [self.dataset[int(i)] for i in self._rng().integers(len(self.dataset), size=self.config.batch_size)]

    def _logprobs(self, model, prompts, responses):
        ids, attention, response = (t.to(self.device) for t in encode_rows(self.tokenizer, prompts, responses))
        return sequence_logprobs(model, ids, attention, response), int(attention.sum())

    def _train_step(self) -> dict:
        torch.manual_seed(self.config.seed * 1_000_003 + self.step)  # dropout: reproducible across resume
        self.model.train()
        pairs = self._batch()
        start = time.perf_counter()
        loss, metrics, tokens = getattr(self, f"_{self.config.method}_loss")(pairs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        metrics.update(loss=float(loss.detach()), tokens_per_s=tokens / max(time.perf_counter() - start, 1e-9))
        return metrics

    def _mopo_loss(self, batch_prompts):
        table = [self.responses[p] for p in batch_prompts]
        prompts = [p for p, t in zip(batch_prompts, table) for _ in t.responses]
        responses = [r for t in table for r in t.responses]
        w = torch.cat([t.win_rates for t in table], dim=1)  # (K, rows)
        log_counts = torch.cat([t.counts.log() for t in table])  # the data distribution over each prompt's rows
        group = torch.tensor([self.prompt_ids[p] for p in prompts])
        weights, _ = mopo_weights(w, self.lam, self.config.tau, group, log_counts)
        estimate = constraint_estimates(w[1:], weights, group)
        self.lam = lambda_update(self.lam, estimate, self.thresholds, self.config.lambda_lr)
        self._ratchet(estimate)
        weights, ess = mopo_weights(w, self.lam, self.config.tau, group, log_counts)
        logp, tokens = self._logprobs(self.model, prompts, responses)
        metrics = {"ess": ess / len(responses)}
        for j in range(self.lam.numel()):
            metrics.update({f"lambda_{j + 1}": float(self.lam[j]), f"constraint_{j + 1}": float(estimate[j]),
                            f"threshold_{j + 1}": float(self.thresholds[j])})
        return weighted_bc_loss(logp, weights.to(logp.dtype).to(self.device)), metrics, tokens

    def _ratchet(self, estimate: torch.Tensor) -> None:
        """Every t0 steps: b <- max(b_user, beta * the constraint estimate of t0 steps ago)."""
        if self.config.t0 is None or self.config.beta_ratchet is None:
            return
        self.constraint_history.append(estimate)
        if self.step % self.config.t0 == 0 and len(self.constraint_history) > self.config.t0:
            lagged = self.constraint_history[-self.config.t0 - 1]
            user = torch.tensor(self.config.thresholds, dtype=torch.float64)
            self.thresholds = torch.maximum(user, self.config.beta_ratchet * lagged)

    def _pairwise_logprobs(self, pairs):
        prompts = [p.prompt for p in pairs]
        logp_a, n_a = self._logprobs(self.model, prompts, [p.response_a for p in pairs])
        logp_b, n_b = self._logprobs(self.model, prompts, [p.response_b for p in pairs])
        with torch.no_grad():
            ref_a, _ = self._logprobs(self.reference, prompts, [p.response_a for p in pairs])
            ref_b, _ = self._logprobs(self.reference, prompts, [p.response_b for p in pairs])
        return logp_a, logp_b, ref_a, ref_b, n_a + n_b

    def _dpo_loss(self, pairs):
        logp_a, logp_b, ref_a, ref_b, tokens = self._pairwise_logprobs(pairs)
        labels = torch.tensor([p.labels[0] for p in pairs], dtype=logp_a.dtype, device=self.device)
        return weighted_dpo_loss(logp_a, logp_b, ref_a, ref_b, self.config.tau, labels), {}, tokens

    def _weighted_dpo_loss(self, pairs):
        logp_a, logp_b, ref_a, ref_b, tokens = self._pairwise_logprobs(pairs)
        labels = torch.tensor([p.labels for p in pairs], dtype=logp_a.dtype, device=self.device).T  # (K, P)
        weights = torch.tensor(self.config.objective_weights, dtype=logp_a.dtype, device=self.device)
        return weighted_dpo_loss(logp_a, logp_b, ref_a, ref_b, self.config.tau, labels, weights), {}, tokens

    def _ipo_loss(self, pairs):
        logp_a, logp_b, ref_a, ref_b, tokens = self._pairwise_logprobs(pairs)
        a_wins = torch.tensor([p.labels[0] >= 0.5 for p in pairs], device=self.device)
        chosen, rejected = torch.where(a_wins, logp_a, logp_b), torch.where(a_wins, logp_b, logp_a)
        ref_c, ref_r = torch.where(a_wins, ref_a, ref_b), torch.where(a_wins, ref_b, ref_a)
        return ipo_loss(chosen, rejected, ref_c, ref_r, self.config.tau), {}, tokens

    def _sft_loss(self, pairs):
        """SFT on the primary's preferred response of each pair."""
        chosen = [p.response_a if p.labels[0] >= 0.5 else p.response_b for p in pairs]
        logp, tokens = self._logprobs(self.model, [p.prompt for p in pairs], chosen)
        return sft_loss(logp), {}, tokens

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint_path(self) -> Path | None:
        return None if self.checkpoint_dir is None else self.checkpoint_dir / CHECKPOINT_NAME

    def _save_checkpoint(self) -> None:
        """Written to a temporary file in the same folder, then renamed over the last one."""
        path = self._checkpoint_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "lam": self.lam, "thresholds": self.thresholds, "constraint_history": self.constraint_history,
                 "config": asdict(self.config)}
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename, so last.pt is never partial
        os.replace(tmp, path)

    def _load_checkpoint(self) -> None:
        path = self._checkpoint_path()
        if path is None or not path.exists():
            raise ValueError(f"checkpoint: nothing to resume from at {path}")
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["config"] != asdict(self.config):
            raise ValueError(f"checkpoint: {path} was written with a different config: {state['config']}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lam, self.thresholds = state["lam"], state["thresholds"]
        self.constraint_history = state["constraint_history"]
        self.step = state["step"]
