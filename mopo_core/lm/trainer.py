"""The language-model trainer: MOPO (Algorithm 1, offline and online) and baselines on one loop,
run with the settings of a :class:`mopo_core.lm.config.TrainConfig`.

Offline mode (MOPO.md section 5). Win-rates come from the dataset's labels: a pair
``(a, b)`` with label ``l_k`` counts ``l_k`` for ``a`` and ``1 - l_k`` for ``b``, and each
response's estimate is the average over every comparison it took part in, read through a prior
of ``win_rate_prior`` pseudo-comparisons at 1/2: ``w_k = (sum of outcomes + prior / 2) / (n +
prior)``. (One raw 0/1 label makes ``exp(w / tau)`` a coin between 1 and ``e^(1/tau)``, biased
upward against ``exp(E w / tau)`` by Jensen; with one pair per prompt and tau = 0.08 the
normalised weights are about (2, 0) and MOPO becomes SFT on the label winner. The prior shrinks
the estimate; it does not remove the bias, it bounds it.) A MOPO step draws ``batch_size``
prompts; their distinct responses are the rows, weighted by how often each appears in the data.
The multipliers take a projected step on the batch estimate of the constraints, the normalised
closed-form weights are recomputed, and the policy takes a weighted behaviour-cloning step on
the response tokens. MOPO needs no reference forward pass for its weights.

What that estimates, and the leash. The cloning step minimises ``-sum_i rho_i log pi(y_i|x)``
over a prompt's rows with ``rho`` the self-normalised ``exp(s_lambda / tau)`` over those rows:
the cross-entropy to ``pi_lambda`` restricted to the data's responses, exact when the rows are
the reference's samples (MOPO.md section 3; `tests/lm/test_lm_trainer.py` reaches the tabular
solution that way). Offline data are neither: one or two responses per prompt, often written by
another model. Minimising that cross-entropy then drives the policy towards putting all its
mass on the data's responses, whatever tau says, far from the model it starts from: nothing in
the weights ties the policy to anything outside the rows. Weighting the rows by the starting
model's absolute sequence probabilities would restore the exact target (``pi_lambda`` puts
``pi_start(y) exp(s/tau) / Z`` on each), but those differ by tens of nats between responses
and favour short ones, and for another model's responses the exact target barely moves at all.
So the KL to the start is held explicitly (``kl_leash``, on by default for offline MOPO): every
exact MOPO solution ``pi_lambda = pi_start exp(s / tau) / Z`` satisfies ``KL(pi_lambda ||
pi_start) = E[s] / tau - log E_start exp(s / tau) <= (max s - min s) / tau <= (1 + sum_j
lambda_j) / tau`` nats (win-rates lie in [0, 1]), and the trainer keeps the policy's KL to its
starting model within that budget as one more constraint: each step it samples one response
per batch prompt from the policy, estimates ``KL(pi || pi_start)`` by their exact per-token KL
(:func:`mopo_core.lm.losses.per_token_kl`; responses cut at ``max_new_tokens`` measure the KL of
their first tokens), its multiplier ``kappa`` takes the projected step ``kappa <- [kappa +
lambda_lr (KL / budget - 1)]_+``, and while ``kappa > 0`` the loss adds ``kappa`` times the
samples' mean KL (gradient through the policy, the paths held fixed). While ``kappa`` is 0 the
check runs every ``LEASH_CHECK_EVERY`` = 5 steps only (steps 1, 6, 11, ...), every step once it
pulls: sampling costs several times a cloning step on small models. The loss logged is the
cloning mean plus that term; ``kl_to_start``, ``kl_budget`` and ``kl_multiplier`` are logged at
the steps that check.
Checked in ``tests/lm/test_offline_leash.py``: on another model's data the policy ends within
1.25 budgets (more than 5 budgets away without the leash); the controller can overshoot by a few
budgets for a few steps while kappa rises.

Online mode. For each of the step's prompts, ``n_candidates`` responses are sampled from the
current policy (temperature 1, so the samples follow pi_psi exactly) and every pair is scored
by the objectives' preference oracle. With ``r_j = pi_ref(y_j|x) / pi_psi(y_j|x)`` (one
reference forward, no gradient), a candidate's win-rate against the reference is estimated
within the pool, excluding self-comparison: ``w_k(i) = sum_{j != i} r_j P_k(y_i > y_j) /
sum_{j != i} r_j`` (plain pool averages while the policy is the reference), and ``log r``
is the weights' importance factor, so the step clones pi_lambda proportional to pi_ref
exp((w_0 + lambda . w_sec) / tau) from on-policy samples and its constraint estimates are
the quantities the evaluation measures (win-rates against the reference's samples).

Robust constraints (``eps`` > 0, MOPO.md section 4): each constraint is estimated by the
worst case over distributions within KL ``eps`` of the batch's rows (per prompt), through a
dual variable chi per constraint that takes one projected ascent step per step (``chi_lr``)
before lambda, as the tabular Algorithm 1 does (:func:`mopo_core.lm.losses.chi_update`), and lambda's step
uses the dual's value there (:func:`mopo_core.lm.losses.robust_constraint_estimates`).

Lagged reference and ratchet (``t0``, ``beta_ratchet``): every ``t0`` steps the reference
becomes the policy as it was ``t0`` steps before. Offline, a row's base measure becomes its
count times ``pi_lag(y|x) / pi_start(y|x)`` (the data stay read as the start's samples), i.e.
``log count + log pi_lag - log pi_start``: relative to the start, so a refresh changes each row
by how far the reference moved, never by the absolute sequence probability (tens of nats); the
log-probs are cached per refresh, the start's for the run. Online, the lagged reference is the
model the importance factors use. With ``beta_ratchet`` the thresholds become ``max(b_user,
beta * the mean constraint estimate over the t0 steps that ended t0 steps ago)`` (a window's
mean, not one noisy batch).

Held-out estimate (``heldout_every`` and a ``heldout`` callable from the task): every that many
steps and at the last, the task's own evaluation of the policy on held-out prompts (win-rates
against the reference's samples with standard errors, the scale the run's point is plotted on)
is logged as ``heldout_k`` / ``heldout_se_k``; the batch estimate ``constraint_j`` is the
multipliers' input, the held-out one what a threshold is judged by.

Baselines: DPO (soft labels of the primary), IPO, weighted multi-objective DPO (a fixed
mixture of the objectives' labels), MODPO (DPO on the primary with the secondaries' reward
margin, ``secondary_rewards``) and SFT draw ``batch_size`` pairs per step; the pairwise
ones run a frozen copy of the starting model for their reference log-probs.

One step: the step's rows (MOPO: responses; others: pairs) are split over the processes of a
``torchrun`` launch (DDP averages the gradients) and each process's share into
``gradient_accumulation_steps`` micro-batches; every loss is a sum over rows divided by the
global row count, so the update equals one process taking the whole batch at once.

KL to the reference (``kl_to_reference``, nats per response): for responses ``y`` sampled from
the policy, the exact KL of the next-token distributions summed over y's positions,
``sum_t KL(pi(.|x, y_<t) || pi_ref(.|x, y_<t))`` over the whole vocabulary, averaged over the
samples (:func:`mopo_core.lm.losses.policy_reference_scores`). Its expectation is the sequence KL
(chain rule) and every term is >= 0, so the estimate is never negative (the plain mean of
``log pi - log pi_ref`` over a few samples can be). Online mode logs it over each step's pools
(before the step's update); ``kl_every`` logs it over fixed prompts.

Runs: the config, metric series (loss, gradient norm before clipping, lambda_j, constraint_j,
threshold_j, ESS, KL to the reference, the leash's KL / budget / multiplier, held-out
estimates, tokens/s) and status go to a :class:`mopo_core.runs.RunStore`; a checkpoint
(model, optimizer, multipliers incl. the leash's, thresholds, lagged references, step: tensors and plain
Python types only) is written atomically every ``checkpoint_every`` steps and at the end, and
read back with ``torch.load(weights_only=True)`` (:func:`read_checkpoint`: nothing in a
checkpoint file can run code; a file that cannot be read that way is refused, naming it).
Batches, samples and dropout are seeded by (seed, step), so resuming from a checkpoint
reproduces an uninterrupted run's metrics. ``request_cancel()`` ends the run after the current
step with status ``cancelled`` and its checkpoint kept. Under torchrun only process 0 writes the
store and the checkpoints.

A run has one owner: while it trains, the training process (pid and start time) is recorded
as the run's owner in the store (:func:`mopo_core.runs.claim_run`) and released when
``train`` returns or raises; resuming a run whose owner is alive is refused, naming the
process. A killed process leaves its record behind, but a dead owner does not count.
"""
from __future__ import annotations

import copy
import os
import pickle
import re
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from mopo_core.data.preferences import PreferenceDataset
from mopo_core.lm import distributed
from mopo_core.lm.devices import FUSED_ADAMW_DEVICES
from mopo_core.lm.config import CHECKPOINT_NAME, TrainConfig, frozen_copies, leashed, same_config
from mopo_core.lm.losses import (
    chi_update,
    constraint_estimates,
    ipo_loss,
    lambda_update,
    mopo_weights,
    per_token_kl,
    policy_reference_scores,
    robust_constraint_estimates,
    sequence_logprobs,
    sft_loss,
    weighted_dpo_loss,
)
from mopo_core.lm.models import pad_token_id, sample, sequence_ids
from mopo_core.runs import RunStore, claim_run, release_run


#: oracle(prompt, a, b) -> (K,) probabilities that a beats b on each objective (as :data:`mopo_core.lm.evaluation.Oracle`).
Oracle = Callable[[str, str, str], np.ndarray]
#: secondary_rewards(prompts, responses) -> (K-1, B) rewards of each row on each secondary objective.
SecondaryRewards = Callable[[list[str], list[str]], np.ndarray]
#: heldout(policy) -> the task's evaluation of the policy on held-out prompts (an object with
#: ``win_rates`` (K,) and ``win_rate_stderr`` (K,), as :class:`mopo_core.lm.evaluation.Evaluation`).
HeldOut = Callable[[torch.nn.Module], object]


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


def encode_rows(tokenizer, prompts: list[str], responses: list[str], finished: list[bool] | None = None):
    """Right-padded ``[bos] prompt response [eos]`` rows: (input_ids, attention_mask, response_mask),
    each (B, T); the response mask covers the response tokens and eos. ``finished[i] = False``
    leaves eos off row i: a sample cut at its token budget is a prefix, and its log-prob is
    that of the prefix, not of a response that ends there."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    prompt_ids = [sequence_ids(tokenizer, p, add_eos=False) for p in prompts]
    ends = [True] * len(responses) if finished is None else finished
    response_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] + (eos if end else [])
                    for r, end in zip(responses, ends)]
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


def response_win_rates(dataset: PreferenceDataset, prior: float = 0.0) -> dict[str, ResponseTable]:
    """Per prompt: each response's average outcome over all its comparisons (as ``a``: the label;
    as ``b``: one minus it), the one-comparison estimates of MOPO.md section 5, averaged, with
    ``prior`` pseudo-comparisons at 1/2 added: ``(sum of outcomes + prior / 2) / (n + prior)``
    (0: the raw average; 1: one win reads 3/4)."""
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
        rates = (np.stack([by_response[r] for r in names], axis=1) + prior / 2) / (n + prior)
        tables[prompt] = ResponseTable(names, torch.from_numpy(rates), torch.from_numpy(n))
    return tables




def pool_win_rates(preferences: np.ndarray, log_importance: np.ndarray | None = None) -> np.ndarray:
    """Win-rates of a pool of n candidates against the distribution the factors reweight to.

    preferences (K, n, n): ``P_k(y_i beats y_j)``, the diagonal is ignored; log_importance
    (n,): ``log r_j``, each candidate's weight as an opponent (None: equal). Returns (K, n)
    ``w_k(i) = sum_{j != i} r_j P_k[i, j] / sum_{j != i} r_j`` (self-comparison excluded).
    """
    preferences = np.asarray(preferences, dtype=np.float64)
    n = preferences.shape[-1]
    if preferences.ndim != 3 or preferences.shape[1] != n or n < 2:
        raise ValueError(f"preferences: expected (K, n, n) with n >= 2, got {preferences.shape}")
    log_r = np.zeros(n) if log_importance is None else np.asarray(log_importance, dtype=np.float64)
    r = np.exp(log_r - log_r.max())
    opponents = np.broadcast_to(r, (n, n)).copy()
    np.fill_diagonal(opponents, 0.0)
    return (preferences * opponents).sum(axis=-1) / opponents.sum(axis=-1)


def pool_preferences(oracle: Oracle, prompt: str, responses: list[str]) -> np.ndarray:
    """(K, n, n) oracle probabilities within a pool; each unordered pair is scored once and
    ``P(b beats a) = 1 - P(a beats b)`` (a preference oracle's convention; 0.5 on the diagonal)."""
    n = len(responses)
    table = None
    for i in range(n):
        for j in range(i + 1, n):
            p = np.asarray(oracle(prompt, responses[i], responses[j]), dtype=np.float64)
            if table is None:
                table = np.full((p.size, n, n), 0.5)
            table[:, i, j], table[:, j, i] = p, 1.0 - p
    return table


#: While the leash's multiplier is 0 (the policy within its KL budget), the KL to the start is
#: sampled and checked every this many steps (steps 1, 1 + this, ...) rather than every step:
#: sampling costs several times a cloning step on small models (bench/train_throughput.py).
LEASH_CHECK_EVERY = 5


class _Row(NamedTuple):
    """One row of a MOPO step: a response cloned with weight ``coefficient`` or, for the
    leash (``leash=True``), a policy sample whose KL to the start is penalised by it."""

    prompt: str
    response: str
    coefficient: float
    finished: bool
    leash: bool = False


@dataclass
class StepPlan:
    """One step's work: ``rows`` (responses or pairs) to be split over processes and
    micro-batches; ``loss_sum(rows) -> (summed loss over those rows, tokens)``; the loss of
    the step is the sum over all rows divided by ``len(rows)``; ``metrics`` already known."""

    rows: list
    loss_sum: Callable[[list], tuple[torch.Tensor, int]]
    metrics: dict


class Trainer:
    """Owns the loop for one run. ``callbacks`` are called as ``callback(step, metrics)``;
    ``oracle`` scores candidate pools in online mode; ``secondary_rewards`` gives MODPO its
    margins; ``parallel`` ("ddp" | "fsdp") is how a torchrun launch splits the work;
    ``heldout`` evaluates the policy on held-out prompts every ``config.heldout_every`` steps.

    Under torchrun (the process group started, e.g. by :func:`mopo_core.lm.distributed.init_from_env`,
    before the trainer is built) "ddp" replicates the model and averages gradients; "fsdp"
    shards parameters, gradients and optimizer state over the processes (torch FSDP2,
    ``fully_shard`` on each transformer block and on the whole), for models whose training state
    does not fit one device. FSDP runs offline MOPO and the pairwise baselines (online
    sampling, the lagged reference and sampled KL need the whole model in each process) and
    its checkpoints are resumed under FSDP."""

    def __init__(self, model, tokenizer, dataset: PreferenceDataset, config: TrainConfig,
                 store: RunStore | None = None, checkpoint_dir: str | os.PathLike | None = None,
                 callbacks: tuple[Callable[[int, dict], None], ...] = (), run_config: dict | None = None,
                 oracle: Oracle | None = None, secondary_rewards: SecondaryRewards | None = None,
                 parallel: str = "ddp", heldout: HeldOut | None = None):
        config.validate(dataset.n_objectives)
        if parallel not in ("ddp", "fsdp"):
            raise ValueError(f"parallel: expected 'ddp' or 'fsdp', got {parallel!r}")
        self.fsdp = parallel == "fsdp" and distributed.is_distributed()
        #: offline MOPO's KL leash to the starting model (see the module doc)
        self.leash = leashed(config)
        if self.fsdp and (config.online or config.t0 is not None or config.kl_every or self.leash):
            raise ValueError("parallel: fsdp runs offline MOPO without kl_leash and the pairwise baselines; online "
                             "mode, t0, kl_every and kl_leash need the whole model in every process (use ddp)")
        clash = set(run_config or {}) & set(asdict(config))
        if clash:
            raise ValueError(f"run_config: keys {sorted(clash)} would overwrite the training config's")
        if config.online and oracle is None:
            raise ValueError("oracle: online mode needs a preference oracle to score the sampled candidates")
        if config.method == "modpo" and secondary_rewards is None:
            raise ValueError("secondary_rewards: modpo needs the secondary objectives' rewards for its margin")
        self.model, self.tokenizer, self.dataset, self.config = model, tokenizer, dataset, config
        self.store, self.callbacks, self.run_config = store, callbacks, run_config or {}
        self.oracle, self.secondary_rewards, self.heldout = oracle, secondary_rewards, heldout
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.device = next(model.parameters()).device
        # the frozen copies of config.frozen_copies: the reference, and for offline MOPO with t0
        # the start of its own (the leash and the lagged reference measure from the start)
        copies = frozen_copies(config)
        self.reference = _frozen_copy(model) if copies else None
        offline_mopo = config.method == "mopo" and not config.online
        self.start = (_frozen_copy(model) if copies == 2 else self.reference) if offline_mopo else None
        self._parallel = _fully_shard(model) if self.fsdp else None  # DDP wraps at train()
        # torch's fused AdamW kernel (one kernel over all parameters, as transformers' Trainer uses
        # by default): the same update as the per-tensor loop, at a fraction of its time on small models
        self.optimizer = torch.optim.AdamW((p for p in model.parameters() if p.requires_grad), lr=config.lr,
                                           weight_decay=config.weight_decay,
                                           fused=self.device.type in FUSED_ADAMW_DEVICES and not self.fsdp)
        self.prompt_ids = {p: i for i, p in enumerate(dataset.prompts())}
        self.responses = response_win_rates(dataset, config.win_rate_prior if config.method == "mopo" else 0.0)
        self.lam = torch.zeros(dataset.n_objectives - 1, dtype=torch.float64)
        self.chi = torch.ones(dataset.n_objectives - 1, dtype=torch.float64)  # robust duals (eps > 0)
        self.thresholds = torch.tensor(config.thresholds if config.method == "mopo" else [], dtype=torch.float64)
        self.constraint_history: list[torch.Tensor] = []
        self.lag_snapshot: dict | None = None  # the policy at the last refresh: the next reference
        self.lagged = False  # whether the reference has moved off the starting model
        self._lag_logprobs: dict[tuple[str, str], float] = {}
        self._start_logprobs: dict[tuple[str, str], float] = {}
        self.kl_multiplier = 0.0  # the leash's multiplier (kappa)
        self.step = 0
        self.run_id = None
        self._cancel = False

    @property
    def is_main(self) -> bool:
        """Process 0 (or the only process): the one that writes the store and checkpoints."""
        return distributed.rank() == 0

    # ------------------------------------------------------------------ lifecycle

    def request_cancel(self) -> None:
        """End the run after the current step (status ``cancelled``, checkpoint kept)."""
        self._cancel = True

    def train(self, resume_run_id: int | None = None) -> TrainResult:
        """Run to ``config.steps`` (from the last checkpoint when ``resume_run_id`` is given),
        as the run's owner (see the module doc); ``ValueError`` naming the process when
        another live process owns the run, naming the file when its checkpoint is unusable.
        A refused resume leaves the run as it was."""
        store = self.store if self.is_main else None
        run_id = self.run_id if resume_run_id is None else resume_run_id
        if run_id is None and store is not None:
            run_id = store.create_run("train", {
                **asdict(self.config), **self.run_config, "n_pairs": len(self.dataset),
                "objectives": list(self.dataset.objectives), "world_size": distributed.world_size(),
                "checkpoint_dir": None if self.checkpoint_dir is None else str(self.checkpoint_dir)})
        with self._owning(store, run_id):
            if resume_run_id is not None:
                self._load_checkpoint(resume_run_id)
                if store is not None:  # a killed run may have logged steps past its checkpoint
                    store.delete_metrics_after(resume_run_id, self.step)
                    store.set_status(resume_run_id, "running")
            self.run_id = run_id
            return self._train_from_here(store)

    @contextmanager
    def _owning(self, store: RunStore | None, run_id: int | None):
        """This process owns ``run_id`` in ``store`` for the block (nothing without a store)."""
        if store is None or run_id is None:
            yield
            return
        claim_run(store.path, run_id)
        try:
            yield
        finally:
            release_run(store.path, run_id)

    def _train_from_here(self, store: RunStore | None) -> TrainResult:
        """The loop from ``self.step`` to ``config.steps`` (or a cancel), with the final checkpoint."""
        if distributed.is_distributed() and self._parallel is None:
            from torch.nn.parallel import DistributedDataParallel

            self._parallel = DistributedDataParallel(_SequenceScorer(self.model), device_ids=None
                                                     if self.device.type == "cpu" else [self.device.index])
        history = []
        try:
            while self.step < self.config.steps and not distributed.any_process(self._cancel):
                self.step += 1
                metrics = self._train_step()
                if (self.step % self.config.log_every == 0 or self.step == self.config.steps
                        or "heldout_0" in metrics):
                    history.append({"step": self.step, **metrics})
                    if store is not None:
                        store.log_metrics(self.run_id, self.step, metrics)
                    for callback in self.callbacks:
                        callback(self.step, metrics)
                if self.step % self.config.checkpoint_every == 0:
                    self.save_checkpoint()
        except BaseException as exc:
            if store is not None:
                status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                store.set_status(self.run_id, status, f"{type(exc).__name__}: {exc}")
            raise
        self.save_checkpoint()
        status = "cancelled" if self.step < self.config.steps else "finished"
        if store is not None:
            store.set_status(self.run_id, status)
        return TrainResult(status, self.step, self.lam.tolist(), self.thresholds.tolist(), self.run_id, history)

    # ------------------------------------------------------------------ one step

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, self.step])

    def _batch_prompts(self) -> list[str]:
        prompts = list(self.responses)
        picked = self._rng().choice(len(prompts), size=min(self.config.batch_size, len(prompts)), replace=False)
        return [prompts[int(i)] for i in picked]

    def _batch_pairs(self) -> list:
        return [self.dataset[int(i)] for i in self._rng().integers(len(self.dataset), size=self.config.batch_size)]

    def _logprobs(self, model, prompts, responses, finished=None):
        ids, attention, response = (t.to(self.device) for t in encode_rows(self.tokenizer, prompts, responses,
                                                                              finished))
        scorer = model if model is self._parallel else _SequenceScorer(model)
        return scorer(ids, attention, response), int(attention.sum())

    @torch.no_grad()
    def _eval_logprobs(self, model, prompts, responses, finished=None) -> np.ndarray:
        """Summed response log-probs (B,) under ``model`` in eval mode, without gradient
        (``finished`` as :func:`encode_rows` takes it)."""
        was_training = model.training
        model.eval()
        try:
            return self._logprobs(model, prompts, responses, finished)[0].double().cpu().numpy()
        finally:
            model.train(was_training)

    def _train_step(self) -> dict:
        torch.manual_seed(self.config.seed * 1_000_003 + self.step)  # dropout: reproducible across resume
        plan = getattr(self, f"_plan_{self.config.method}")()
        self.model.train()
        start = time.perf_counter()
        lo, hi = distributed.shard_bounds(len(plan.rows))
        mine = plan.rows[lo:hi]
        if not mine:
            raise ValueError(f"batch_size: a step has {len(plan.rows)} rows, too few for "
                             f"{distributed.world_size()} processes")
        n_chunks = min(self.config.gradient_accumulation_steps, len(mine))
        scale = distributed.world_size() / len(plan.rows)  # DDP averages over processes
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, tokens = 0.0, 0
        for c in range(n_chunks):
            a, b = distributed.shard_bounds(len(mine), c, n_chunks)
            last = c == n_chunks - 1
            with self._gradient_sync(last):
                part, n = plan.loss_sum(mine[a:b])
                (part * scale).backward()
            loss_sum, tokens = loss_sum + float(part.detach()), tokens + n
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
        self.optimizer.step()
        totals = distributed.all_reduce_sum(torch.tensor([loss_sum, tokens], dtype=torch.float64))
        metrics = {**plan.metrics, "loss": float(totals[0]) / len(plan.rows), "grad_norm": float(grad_norm),
                   "tokens_per_s": float(totals[1]) / max(time.perf_counter() - start, 1e-9)}
        self._refresh_lagged_reference()
        if self.config.kl_every and self.step % self.config.kl_every == 0 and self.is_main:
            metrics["kl_to_reference"] = self._sampled_kl()
        every = self.config.heldout_every
        if self.heldout is not None and every and self.is_main and (
                self.step % every == 0 or self.step == self.config.steps):
            metrics.update(self._heldout_metrics())
        return metrics

    def _heldout_metrics(self) -> dict:
        """``heldout_k`` and ``heldout_se_k`` for every objective k: the task's held-out
        evaluation of the policy as it is now (the scale of the run's point)."""
        was_training = self.model.training
        try:
            evaluation = self.heldout(self.model)
        finally:
            self.model.train(was_training)
        metrics = {}
        for k, (value, se) in enumerate(zip(evaluation.win_rates, evaluation.win_rate_stderr)):
            metrics.update({f"heldout_{k}": float(value), f"heldout_se_{k}": float(se)})
        return metrics

    @property
    def _forward_model(self):
        """The model the gradient passes run through (the DDP or FSDP wrapper under torchrun)."""
        return self._parallel if self._parallel is not None else self.model

    def _gradient_sync(self, sync: bool):
        """Context for one micro-batch's backward: gradients are reduced over processes only on
        the step's last micro-batch."""
        if self._parallel is None:
            return nullcontext()
        if self.fsdp:
            self._parallel.set_requires_gradient_sync(sync)
            return nullcontext()
        return nullcontext() if sync else self._parallel.no_sync()

    # ------------------------------------------------------------------ MOPO

    def _plan_mopo(self) -> StepPlan:
        prompts = self._batch_prompts()
        metrics = {}
        if self.config.online:
            sample_start = time.perf_counter()
            pools = distributed.gather_objects([self._pool(i, prompts[i])
                                                for i in range(*distributed.shard_bounds(len(prompts)))])
            responses = [r for pool in pools for r in pool["responses"]]
            finished = [f for pool in pools for f in pool["finished"]]
            w = torch.from_numpy(np.concatenate([pool["win_rates"] for pool in pools], axis=1))
            log_importance = torch.from_numpy(np.concatenate([pool["log_ratio"] for pool in pools]))
            group = torch.tensor([i for i, pool in enumerate(pools) for _ in pool["responses"]])
            metrics.update(kl_to_reference=float(np.mean([pool["kl"] for pool in pools])),
                           sample_s=time.perf_counter() - sample_start)
        else:
            tables = [self.responses[p] for p in prompts]
            responses = [r for t in tables for r in t.responses]
            w = torch.cat([t.win_rates for t in tables], dim=1)  # (K, rows)
            group = torch.tensor([i for i, t in enumerate(tables) for _ in t.responses])
            log_importance = self._offline_base_measure(prompts, tables)
            finished = [True] * len(responses)  # dataset responses are whole
        row_prompts = [prompts[int(g)] for g in group]
        weights, _ = mopo_weights(w, self.lam, self.config.tau, group, log_importance)
        if self.config.eps > 0:
            eps = self.config.eps
            self.chi = chi_update(self.chi, w[1:], weights, group, eps, self.config.chi_lr, log_importance)
            estimate = robust_constraint_estimates(self.chi, w[1:], weights, group, eps, log_importance)
            metrics.update({f"chi_{j + 1}": float(c) for j, c in enumerate(self.chi)})
        else:
            estimate = constraint_estimates(w[1:], weights, group)
        self.lam = lambda_update(self.lam, estimate, self.thresholds, self.config.lambda_lr)
        self._ratchet(estimate)
        weights, ess = mopo_weights(w, self.lam, self.config.tau, group, log_importance)
        metrics["ess"] = ess / len(responses)
        for j in range(self.lam.numel()):
            metrics.update({f"lambda_{j + 1}": float(self.lam[j]), f"constraint_{j + 1}": float(estimate[j]),
                            f"threshold_{j + 1}": float(self.thresholds[j])})
        rows = [_Row(p, r, c, f) for p, r, c, f in zip(row_prompts, responses, weights.tolist(), finished)]
        if self.leash and (self.kl_multiplier > 0 or (self.step - 1) % LEASH_CHECK_EVERY == 0):
            rows += self._leash_rows(prompts, metrics)
        if len(rows) > len(responses):  # each part keeps its own mean: cloning + kappa * KL
            n_clone, n_leash = len(responses), len(rows) - len(responses)
            rows = [r._replace(coefficient=r.coefficient * len(rows) / (n_leash if r.leash else n_clone))
                    for r in rows]
        return StepPlan(rows, self._clone_and_leash_loss, metrics)

    def _leash_rows(self, prompts: list[str], metrics: dict) -> list:
        """The KL leash of offline MOPO for this step (module doc; taken every step while
        kappa > 0, else every :data:`LEASH_CHECK_EVERY` steps from the first): one response per prompt
        sampled from the policy; their mean exact per-token KL to the starting model estimates
        KL(policy || start); the multiplier takes a projected step on the estimate's excess over
        the budget ``(1 + sum lambda) / tau`` (relative, so one lambda_lr fits both) and, while
        positive, the samples become rows of the loss (``kappa * KL``, gradient through the policy)."""
        seed = int(np.random.default_rng([self.config.seed, self.step, 1 << 21]).integers(2**31))
        responses, finished = sample(self.model, self.tokenizer, prompts, 1, self.config.max_new_tokens, 1.0, seed,
                                     return_finished=True)
        kl = float(self._policy_reference_scores(prompts, responses, finished, self.start)[2].mean())
        budget = (1.0 + float(self.lam.sum())) / self.config.tau
        self.kl_multiplier = max(0.0, self.kl_multiplier + self.config.lambda_lr * (kl / budget - 1.0))
        metrics.update(kl_to_start=kl, kl_budget=budget, kl_multiplier=self.kl_multiplier)
        if self.kl_multiplier == 0.0:
            return []
        return [_Row(p, r, self.kl_multiplier, f, leash=True) for p, r, f in zip(prompts, responses, finished)]

    def _clone_and_leash_loss(self, chunk: list) -> tuple[torch.Tensor, int]:
        """Summed loss of MOPO rows: ``-coefficient * log pi(y|x)`` for cloned rows,
        ``coefficient * per-token KL to the start`` for leash rows, in one forward of the scorer
        (one DDP forward per micro-batch); without leash rows, the plain cloning forward."""
        clone, leash = [r for r in chunk if not r.leash], [r for r in chunk if r.leash]
        if leash:
            batches = [None if not rows else tuple(t.to(self.device) for t in encode_rows(
                self.tokenizer, [r.prompt for r in rows], [r.response for r in rows], [r.finished for r in rows]))
                for rows in (clone, leash)]
            scorer = self._forward_model if self._parallel is not None else _SequenceScorer(self.model)
            logp, kl = scorer(*(batches[0] or (None,) * 3), kl_batch=batches[1], kl_reference=self.start)
            tokens = sum(int(b[1].sum()) for b in batches if b is not None)
        else:
            logp, tokens = self._logprobs(self._forward_model, [r.prompt for r in clone],
                                          [r.response for r in clone], [r.finished for r in clone])
            kl = None
        total = 0.0
        for rows, values, sign in ((clone, logp, -1.0), (leash, kl, 1.0)):
            if rows:
                coefficient = torch.tensor([r.coefficient for r in rows], dtype=values.dtype, device=values.device)
                total = total + sign * (coefficient * values).sum()
        return total, tokens

    def _offline_base_measure(self, prompts, tables) -> torch.Tensor:
        """Log base measure of the offline rows: the data's counts (the data read as samples of
        the starting model), times ``pi_lag / pi_start`` once the reference has moved, i.e.
        ``log count + log pi_lag(y|x) - log pi_start(y|x)``: relative to the start, so each
        refresh changes a row by how far the reference moved, never by a response's absolute
        sequence probability (module doc). Log-probs are cached (the lagged ones until the next
        refresh)."""
        base = torch.cat([t.counts.log() for t in tables])
        if not self.lagged:
            return base
        keys = [(p, r) for p, t in zip(prompts, tables) for r in t.responses]
        lag = self._cached_logprobs(self.reference, self._lag_logprobs, keys)
        start = self._cached_logprobs(self.start, self._start_logprobs, keys)
        return base + lag - start

    def _cached_logprobs(self, model, cache: dict, keys: list) -> torch.Tensor:
        """``log model(response|prompt)`` (float64) for ``keys`` ((prompt, response) pairs),
        computing only those not in ``cache``."""
        missing = [k for k in dict.fromkeys(keys) if k not in cache]
        if missing:
            values = self._eval_logprobs(model, [k[0] for k in missing], [k[1] for k in missing])
            cache.update(zip(missing, values.tolist()))
        return torch.tensor([cache[k] for k in keys], dtype=torch.float64)

    def _pool(self, index: int, prompt: str) -> dict:
        """Online candidates for the batch's ``index``-th prompt: responses sampled from the policy
        (seeded by seed, step and index, so the split over processes changes nothing), their
        importance-corrected pool win-rates (K, n), ``log r = log pi_ref - log pi_psi`` (n,), the
        pool's KL(pi_psi || pi_ref) estimate (the samples' mean exact per-token KL, never
        negative; see the module doc), and which samples ended with eos (``finished``; one
        cut at ``max_new_tokens`` is scored and cloned as the prefix it is, without eos)."""
        cfg = self.config
        seed = int(np.random.default_rng([cfg.seed, self.step, index]).integers(2**31))
        responses, finished = sample(self.model, self.tokenizer, [prompt], cfg.n_candidates, cfg.max_new_tokens, 1.0,
                                     seed, return_finished=True)
        logp, reference_logp, kl = self._policy_reference_scores([prompt] * len(responses), responses, finished)
        log_ratio = reference_logp - logp
        win_rates = pool_win_rates(pool_preferences(self.oracle, prompt, responses), log_ratio)
        return {"responses": responses, "finished": finished, "win_rates": win_rates, "log_ratio": log_ratio,
                "kl": float(kl.mean())}

    def _ratchet(self, estimate: torch.Tensor) -> None:
        """Every t0 steps: b <- max(b_user, beta * the mean constraint estimate over the (up
        to) t0 steps that ended t0 steps ago): a window's mean, not one noisy batch."""
        t0 = self.config.t0
        if t0 is None or self.config.beta_ratchet is None:
            return
        self.constraint_history.append(estimate)
        if self.step % t0 == 0 and len(self.constraint_history) > t0:
            reached = torch.stack(self.constraint_history[:-t0][-t0:]).mean(dim=0)
            user = torch.tensor(self.config.thresholds, dtype=torch.float64)
            self.thresholds = torch.maximum(user, self.config.beta_ratchet * reached)

    def _refresh_lagged_reference(self) -> None:
        """Every t0 steps: the reference becomes the snapshot taken t0 steps ago, and the policy
        as it is now becomes the next snapshot."""
        if self.config.t0 is None or self.step % self.config.t0 != 0:
            return
        if self.lag_snapshot is not None:
            self.reference.load_state_dict(self.lag_snapshot)
            self.lagged = True
            self._lag_logprobs.clear()
        self.lag_snapshot = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _sampled_kl(self) -> float:
        """KL(policy || reference) in nats per response, never negative: the mean exact
        per-token KL summed over each of n_candidates samples from the policy for each of the
        first kl_prompts prompts (see the module doc)."""
        prompts = sorted(self.responses)[: self.config.kl_prompts]
        seed = int(np.random.default_rng([self.config.seed, self.step, 1 << 20]).integers(2**31))
        responses, finished = sample(self.model, self.tokenizer, prompts, self.config.n_candidates,
                                     self.config.max_new_tokens, 1.0, seed, return_finished=True)
        repeated = [p for p in prompts for _ in range(self.config.n_candidates)]
        return float(self._policy_reference_scores(repeated, responses, finished)[2].mean())

    def _policy_reference_scores(self, prompts, responses, finished, reference=None
                                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(log pi, log pi_ref, exact per-token KL summed over the response) per row, float64
        (B,) each, both models in eval mode (:func:`mopo_core.lm.losses.policy_reference_scores`;
        ``finished`` as :func:`encode_rows` takes it); ``reference``: another model than the
        reference (the start, for the leash)."""
        reference = self.reference if reference is None else reference
        batch = [t.to(self.device) for t in encode_rows(self.tokenizer, prompts, responses, finished)]
        modes = [(m, m.training) for m in (self.model, reference)]
        for model, _ in modes:
            model.eval()
        try:
            scores = policy_reference_scores(self.model, reference, *batch)
        finally:
            for model, training in modes:
                model.train(training)
        return tuple(x.double().cpu().numpy() for x in scores)

    # ------------------------------------------------------------------ pairwise baselines

    def _pairwise_plan(self, loss) -> StepPlan:
        """Rows are pairs; ``loss(pairs, logp_a, logp_b, ref_a, ref_b)`` is the mean over them.
        Both responses of a micro-batch's pairs go through the policy in one forward (and
        through the reference in one), padded together."""

        def loss_sum(pairs):
            # one forward over both sides (a's rows, then b's), as TRL's concatenated forward
            prompts = [p.prompt for p in pairs] * 2
            responses = [p.response_a for p in pairs] + [p.response_b for p in pairs]
            logp, tokens = self._logprobs(self._forward_model, prompts, responses)
            with torch.no_grad():
                ref, _ = self._logprobs(self.reference, prompts, responses)
            n = len(pairs)
            return loss(pairs, logp[:n], logp[n:], ref[:n], ref[n:]) * n, tokens

        return StepPlan(self._batch_pairs(), loss_sum, {})

    def _labels(self, pairs, like: torch.Tensor) -> torch.Tensor:
        """(K, P) labels of ``pairs`` as a tensor like ``like``."""
        return torch.tensor([p.labels for p in pairs], dtype=like.dtype, device=like.device).T

    def _plan_dpo(self) -> StepPlan:
        return self._pairwise_plan(lambda pairs, la, lb, ra, rb: weighted_dpo_loss(
            la, lb, ra, rb, self.config.tau, self._labels(pairs, la)[0]))

    def _plan_weighted_dpo(self) -> StepPlan:
        return self._pairwise_plan(lambda pairs, la, lb, ra, rb: weighted_dpo_loss(
            la, lb, ra, rb, self.config.tau, self._labels(pairs, la), self.config.objective_weights))

    def _plan_modpo(self) -> StepPlan:
        c = np.asarray(self.config.objective_weights, dtype=np.float64)

        def loss(pairs, la, lb, ra, rb):
            prompts = [p.prompt for p in pairs]
            gap = (np.asarray(self.secondary_rewards(prompts, [p.response_a for p in pairs]), dtype=np.float64)
                   - np.asarray(self.secondary_rewards(prompts, [p.response_b for p in pairs]), dtype=np.float64))
            margin = torch.as_tensor(c[1:] @ gap / c[0], dtype=la.dtype, device=la.device)
            return weighted_dpo_loss(la, lb, ra, rb, self.config.tau / c[0], self._labels(pairs, la)[0],
                                     margin=margin)

        return self._pairwise_plan(loss)

    def _plan_ipo(self) -> StepPlan:
        return self._pairwise_plan(lambda pairs, la, lb, ra, rb: ipo_loss(
            la, lb, ra, rb, self.config.tau, self._labels(pairs, la)[0]))

    def _plan_sft(self) -> StepPlan:
        """SFT on the primary's preferred response of each pair."""

        def loss_sum(pairs):
            chosen = [p.response_a if p.labels[0] >= 0.5 else p.response_b for p in pairs]
            logp, tokens = self._logprobs(self._forward_model, [p.prompt for p in pairs], chosen)
            return sft_loss(logp) * len(pairs), tokens

        return StepPlan(self._batch_pairs(), loss_sum, {})

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint_path(self) -> Path | None:
        return None if self.checkpoint_dir is None else self.checkpoint_dir / CHECKPOINT_NAME

    def _model_and_optimizer_state(self) -> tuple[dict, dict]:
        """Full (unsharded) state dicts; under FSDP a collective call, gathered to CPU."""
        if not self.fsdp:
            return self.model.state_dict(), self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(self.model, self.optimizer,
                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save_checkpoint(self) -> None:
        """The checkpoint of the current step (called every ``checkpoint_every`` steps and at the
        end; callers may take one at any step between steps). Written by process 0 to a temporary file in the same folder, then renamed over the
        last one."""
        path = self._checkpoint_path()
        if path is None:
            return
        model_state, optimizer_state = self._model_and_optimizer_state()
        if not self.is_main:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"step": self.step, "model": model_state, "optimizer": optimizer_state, "fsdp": self.fsdp,
                 "lam": self.lam, "chi": self.chi, "thresholds": self.thresholds,
                 "constraint_history": self.constraint_history, "kl_multiplier": self.kl_multiplier,
                 "config": asdict(self.config), "lag_snapshot": self.lag_snapshot, "lagged": self.lagged,
                 "reference": self.reference.state_dict() if self.lagged else None}
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename, so last.pt is never partial
        os.replace(tmp, path)

    def _load_checkpoint(self, run_id: int) -> None:
        if self.checkpoint_dir is None:
            raise ValueError(f"run {run_id}: the trainer has no checkpoint folder to resume from")
        state = read_checkpoint(run_id, self.checkpoint_dir, self.config, map_location=self.device)
        path = self._checkpoint_path()
        if state.get("fsdp", False) != self.fsdp:
            raise ValueError(f"run {run_id}: the checkpoint {path} was written "
                             f"{'with' if state.get('fsdp') else 'without'} FSDP; resume it the same way")
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"], options=StateDictOptions(full_state_dict=True))
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.lam, self.thresholds = state["lam"], state["thresholds"]
        self.chi = state.get("chi", self.chi)  # (checkpoints from before eps hold none: eps was 0)
        self.constraint_history = state["constraint_history"]
        self.kl_multiplier = float(state.get("kl_multiplier", 0.0))  # (none before the leash)
        self.lag_snapshot, self.lagged = state.get("lag_snapshot"), state.get("lagged", False)
        if self.lagged:
            self.reference.load_state_dict(state["reference"])
        self.step = state["step"]


#: What every checkpoint holds: key -> the type its value must have.
_CHECKPOINT_FIELDS = {"step": int, "model": dict, "optimizer": dict, "config": dict}


def read_checkpoint(run_id: int, checkpoint_dir: str | os.PathLike, config: TrainConfig,
                    map_location: str | torch.device = "cpu") -> dict:
    """The training checkpoint in ``checkpoint_dir`` (:data:`CHECKPOINT_NAME`), read with
    ``torch.load(weights_only=True)``: tensors and plain Python types only, so nothing in the
    file runs. ``ValueError`` naming the run and the file when there is none, when it cannot be
    read that way (written by an older version, or not a checkpoint: e.g. a pickle of other
    objects), when it lacks a field, or when it was written with another config than ``config``."""
    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise ValueError(f"run {run_id}: no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # a bare pickle's protocol warning: the error below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError,
            KeyError, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"run {run_id}: cannot read the checkpoint {path}: written by an older version or not a "
                         f"checkpoint (read only with torch.load(weights_only=True): {_load_failure(exc)})") from None
    missing = [f"{key} ({kind.__name__})" for key, kind in _CHECKPOINT_FIELDS.items()
               if not isinstance(state, dict) or not isinstance(state.get(key), kind)]
    if missing:
        raise ValueError(f"run {run_id}: cannot read the checkpoint {path}: not a training checkpoint "
                         f"(no {', '.join(missing)})")
    if not same_config(state["config"], config):
        raise ValueError(f"run {run_id}: the checkpoint {path} was written with a different config "
                         f"({state['config']}) than the stored run's ({asdict(config)})")
    return state


def _load_failure(exc: Exception) -> str:
    """torch.load's reason on one short line: for a refused pickle, the unpickler's own
    reason (e.g. "Unsupported global: GLOBAL posix.system ..."), without torch's advice to
    load the file unsafely."""
    text = str(exc)
    refusal = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", text, re.DOTALL)
    reason = refusal.group(1) if refusal else text
    return f"{type(exc).__name__}: {' '.join(reason.split())[:200]}".rstrip(": ")


class _SequenceScorer(torch.nn.Module):
    """A causal LM whose forward is :func:`sequence_logprobs` (response log-probs, fused where
    the model allows), so that under DDP the whole computation runs inside DDP's forward.
    With ``kl_batch`` (input_ids, attention_mask, response_mask) and ``kl_reference``, it also
    scores those rows' per-token KL to the reference (:func:`mopo_core.lm.losses.per_token_kl`)
    in the same forward and returns ``(log-probs or None when input_ids is None, KL)``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, response_mask, kl_batch=None, kl_reference=None):
        logp = None if input_ids is None else sequence_logprobs(self.model, input_ids, attention_mask, response_mask)
        return logp if kl_batch is None else (logp, per_token_kl(self.model, kl_reference, *kl_batch))


def _fully_shard(model) -> torch.nn.Module:
    """FSDP2-shard ``model`` in place: each block of its largest ``ModuleList`` (the transformer
    layers), then a :class:`_SequenceScorer` root holding the rest (embeddings, final norm,
    head), so the fused log-prob path runs inside the root's forward. Returns the root."""
    from torch.distributed.fsdp import fully_shard

    blocks = max((m for m in model.modules() if isinstance(m, torch.nn.ModuleList)), key=len, default=())
    for block in blocks:
        fully_shard(block)
    return fully_shard(_SequenceScorer(model))


def _frozen_copy(model):
    """A frozen eval-mode copy of ``model`` (the reference)."""
    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


def implicit_rewards(models, reference, tokenizer, tau: float) -> SecondaryRewards:
    """DPO's implicit rewards ``r_j(x, y) = tau (log pi_j(y|x) - log pi_ref(y|x))`` of one model per
    secondary objective (each trained by DPO on that objective's labels from ``reference``), as
    MODPO's margin: a callable ``(prompts, responses) -> (J, B)`` evaluated without gradient."""
    device = next(reference.parameters()).device

    @torch.no_grad()
    def rewards(prompts: list[str], responses: list[str]) -> np.ndarray:
        batch = [t.to(device) for t in encode_rows(tokenizer, prompts, responses)]
        out = []
        for model in (reference, *models):
            was_training = model.training
            model.eval()
            out.append(sequence_logprobs(model, *batch).double().cpu().numpy())
            model.train(was_training)
        return tau * (np.stack(out[1:]) - out[0])

    return rewards
