"""The engine side of the app's Train page: the page's form values turned into checked training
configs and sweep job lists, the job queue as a table, a run's metric series for the live
curves, and the finished runs' points on the Pareto plane. No Streamlit, and no torch until a
task's setup is checked (:func:`dataset_setup`, :func:`text_setup`): training configs are
:class:`mopo_core.lm.config.TrainConfig`, which imports without torch, so the page loads fast.

The worker (:mod:`mopo_core.training.jobs`) trains either the built-in synthetic text task with the
tiny word-level GPT (:mod:`mopo_core.training.text_task`: objective 0, the primary V0, is helpfulness,
objective 1, the secondary V1, harmlessness) or a local checkpoint on a preference file judged
by a preference model (:mod:`mopo_core.training.dataset_task`: the file's objectives, its first the
primary). A finished run's point holds the policy's win-rates against the reference model on
held-out prompts; while a run trains, only its constraint estimates (the secondary objectives'
win-rates on the step's batch) are logged, not the primary's. Points share a plane only when
they were measured the same way (:func:`plane_key`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from synthetic.text_task import TextTask

from app.presenters.compare import staircase
from app.presenters.formats import DEFAULT_TAU
from mopo_core.experiments.compare_runs import format_params, split_diverged, union_front_mask
from mopo_core.lm.config import METHODS, WEIGHTED_METHODS, TrainConfig
from mopo_core.runs import Run, RunStore
from mopo_core.training import jobs
from mopo_core.training.tasks import task_of

#: Field labels of the dataset form and the DatasetSetup field each fills (errors name these).
DATASET_LABELS = {
    "data": "Preference file",
    "format": "File format",
    "objective": "Objective name (one-objective formats)",
    "model": "Model",
    "prefmodel": "Preference model (judge)",
    "lora_r": "LoRA rank",
    "split": "Split fractions (train, validation, test)",
    "split_seed": "Split seed",
    "max_response_tokens": "Response tokens kept",
    "eval_samples": "Evaluation samples per prompt",
    "max_new_tokens": "Evaluation sample length (tokens)",
    "eval_seed": "Evaluation seed",
    "dtype": "Weights dtype",
    "device": "Device",
    "gradient_checkpointing": "Gradient checkpointing",
}
#: The text task's objectives as the worker trains them (V0 primary, V1 secondary).
OBJECTIVES: tuple[str, ...] = TextTask().objectives
#: The page's name for each of :data:`mopo_core.lm.config.METHODS`.
METHOD_NAMES = {
    "mopo": "MOPO (maximise helpfulness subject to harmlessness ≥ b1)",
    "dpo": "DPO (helpfulness labels only)",
    "ipo": "IPO (helpfulness labels only)",
    "weighted_dpo": "weighted DPO (a fixed mix of both objectives' labels)",
    "modpo": "MODPO (DPO on helpfulness with a harmlessness reward margin)",
    "sft": "SFT (clone the preferred responses)",
}
SHORT_NAMES = {"mopo": "MOPO", "dpo": "DPO", "ipo": "IPO", "weighted_dpo": "weighted DPO", "modpo": "MODPO",
               "sft": "SFT"}
#: Baselines a sweep can add to its MOPO thresholds.
SWEEP_BASELINES = ("dpo", "modpo", "weighted_dpo")
#: Fewest prompts the text task may have: the held-out test split needs whole prompts.
MIN_PROMPTS = 10
#: Reference point of the Pareto plane: the reference model's win-rate against itself.
REFERENCE_POINT = (0.5, 0.5)

#: The page's label for each TrainConfig / TextTaskSetup field (error messages name these).
FIELD_LABELS = {
    "method": "Method",
    "thresholds": "Threshold b",
    "objective_weights": "Objective weights",
    "tau": "τ (KL strength; β of DPO/IPO)",
    "steps": "Steps",
    "batch_size": "Batch size",
    "lr": "Learning rate",
    "lambda_lr": "Multiplier step size (λ learning rate)",
    "t0": "t0 (lagged-reference period, steps)",
    "beta_ratchet": "Ratchet β",
    "eps": "Robust radius ε (KL ball)",
    "chi_lr": "Robust dual step size (χ learning rate)",
    "online": "Online sampling",
    "n_candidates": "Candidates per prompt (online)",
    "max_new_tokens": "Max new tokens (online)",
    "gradient_accumulation_steps": "Gradient accumulation steps",
    "kl_every": "KL estimate every (steps)",
    "heldout_every": "Held-out estimate every (steps)",
    "win_rate_prior": "Win-rate prior (pseudo-comparisons at ½)",
    "kl_leash": "KL leash to the starting model",
    "seed": "Training seed",
    "checkpoint_every": "Checkpoint every (steps)",
    "n_prompts": "Prompts",
    "pairs_per_prompt": "Preference pairs per prompt",
    "temperature": "Oracle temperature",
    "sft_steps": "Reference SFT steps",
    "eval_samples": "Evaluation samples per prompt",
    "task_seed": "Task seed",
}
#: The page's starting values (TrainConfig's and TextTaskSetup's defaults, except where a value
#: suits the page better: a KL estimate every 10 steps so that its curve is drawn, a held-out
#: estimate every 25 so that the live run has a point on the plane's scale).
DEFAULTS = {
    "method": "mopo", "threshold": 0.6, "secondary_weight": 0.5, "tau": DEFAULT_TAU, "steps": 100, "batch_size": 8,
    "lr": 1e-3, "lambda_lr": 1.0, "t0": 0, "beta_ratchet": 0.0, "eps": 0.0, "chi_lr": 0.5, "online": False,
    "n_candidates": 8,
    "max_new_tokens": 16, "gradient_accumulation_steps": 1, "kl_every": 10, "seed": 0, "checkpoint_every": 25,
    "heldout_every": 25, "win_rate_prior": 1.0, "kl_leash": True,
    "n_prompts": 40, "task_n_candidates": 8, "pairs_per_prompt": 8, "temperature": 0.1, "sft_steps": 300,
    "eval_samples": 8, "task_seed": 0,
    # the dataset form (DatasetSetup's defaults, LoRA on: a full copy of a real checkpoint is rarely wanted)
    "lora_r": 8, "split": (0.8, 0.1, 0.1), "split_seed": 0, "max_response_tokens": 64, "dataset_eval_samples": 4,
    "eval_max_new_tokens": 24, "eval_seed": 0,
}


#: Each numeric form field's allowed values: (low, high, whole number, low excluded). The page's
#: number fields have no bounds of their own (Streamlit would silently put back the old value of
#: one typed out of range): :func:`check_value` refuses such a value, naming the field and this range.
FIELD_RANGES = {
    "threshold": (0.0, 1.0, False, False),
    "secondary_weight": (0.0, 1.0, False, False),
    "tau": (0.0, 10.0, False, True),
    "steps": (1, 100_000, True, False),
    "batch_size": (1, 512, True, False),
    "lr": (0.0, 1.0, False, True),
    "lambda_lr": (0.0, 100.0, False, True),
    "gradient_accumulation_steps": (1, 64, True, False),
    "kl_every": (0, 10_000, True, False),
    "heldout_every": (0, 100_000, True, False),
    "win_rate_prior": (0.0, 1000.0, False, False),
    "checkpoint_every": (1, 100_000, True, False),
    "seed": (0, 1_000_000, True, False),
    "eps": (0.0, 10.0, False, False),
    "chi_lr": (0.0, 100.0, False, True),
    "t0": (0, 100_000, True, False),
    "beta_ratchet": (0.0, 1.0, False, False),
    "n_candidates": (2, 64, True, False),
    "max_new_tokens": (1, 64, True, False),
    "n_prompts": (MIN_PROMPTS, 10_000, True, False),
    "task_n_candidates": (2, 64, True, False),
    "pairs_per_prompt": (1, 1_000, True, False),
    "temperature": (0.0, 10.0, False, False),
    "sft_steps": (1, 100_000, True, False),
    "eval_samples": (1, 256, True, False),
    "task_seed": (0, 1_000_000, True, False),
    # the dataset form
    "lora_r": (0, 1024, True, False),
    "split_seed": (0, 1_000_000, True, False),
    "max_response_tokens": (1, 4096, True, False),
    "dataset_eval_samples": (1, 256, True, False),
    "eval_max_new_tokens": (1, 1024, True, False),
    "eval_seed": (0, 1_000_000, True, False),
}
#: Above this learning rate the page warns before Start (a step that large usually diverges).
LR_WARN = 0.1
#: The share of the text task's pairs (and prompts) its training split holds (PreferenceDataset.split).
TEXT_TRAIN_SHARE = 0.8


def allowed_range(field: str) -> str:
    """The allowed values of ``field`` in words, e.g. ``(0, 10]`` or ``whole numbers in [1, 100000]``."""
    low, high, whole, open_low = FIELD_RANGES[field]
    interval = f"{'(' if open_low else '['}{low:g}, {high:g}]"
    return f"a whole number in {interval}" if whole else f"a number in {interval}"


def check_value(value, field: str, label: str) -> str | None:
    """None when ``value`` (as typed; None for an empty field) is allowed for ``field``
    (:data:`FIELD_RANGES`), else a message naming ``label`` and the allowed range. Nothing is
    clipped or replaced."""
    low, high, whole, open_low = FIELD_RANGES[field]
    allowed = allowed_range(field)
    if value is None:
        return f"{label}: empty; give {allowed}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"{label}: {value!r} is not a number; give {allowed}"
    if not math.isfinite(number):
        return f"{label}: {value} is not finite; give {allowed}"
    if whole and number != int(number):
        return f"{label}: {value:g} is not a whole number; give {allowed}"
    if number < low or number > high or (open_low and number <= low):
        return f"{label}: {number:g} is outside the allowed range; give {allowed}"
    return None


def text_train_size(n_prompts: int, pairs_per_prompt: int) -> tuple[int, int]:
    """About how many prompts and preference pairs the text task's training split holds (its
    split gives :data:`TEXT_TRAIN_SHARE` of the prompts to training; pairs whose two responses
    are identical are dropped first, so the pairs are an upper bound)."""
    prompts = max(1, round(TEXT_TRAIN_SHARE * int(n_prompts)))
    return prompts, prompts * int(pairs_per_prompt)


def form_warnings(method: str, values: dict, train_prompts: int | None = None,
                  train_pairs: int | None = None) -> list[str]:
    """Settings that are allowed but implausible, each naming its field, for the page to show
    before Start: a learning rate above :data:`LR_WARN`; a batch larger than the training data
    (MOPO's batch counts prompts, the other methods' pairs; ``None``: size unknown); a KL
    estimate period longer than the run. ``values`` are the form's (checked) values."""
    out = []
    lr = values.get("lr")
    if lr is not None and lr > LR_WARN:
        out.append(f"{FIELD_LABELS['lr']} (lr) = {lr:g} is above {LR_WARN:g}: steps that large usually make the "
                   f"loss explode (the page's default is {DEFAULTS['lr']:g}).")
    batch = values.get("batch_size")
    if batch is not None:
        if method == "mopo":
            size, unit = (train_prompts, "prompts") if train_prompts is not None else (train_pairs, "pairs")
        else:
            size, unit = train_pairs, "pairs"
        if size is not None and batch > size:
            what = "prompts per step" if method == "mopo" else "pairs per step"
            out.append(f"{FIELD_LABELS['batch_size']} (batch_size) = {batch} {what} is larger than the training "
                       f"split (about {size} {unit}): every step sees all of it, so a smaller batch costs nothing.")
    kl_every, steps = values.get("kl_every"), values.get("steps")
    if kl_every and steps and kl_every > steps and not values.get("online"):
        out.append(f"{FIELD_LABELS['kl_every']} (kl_every) = {kl_every} is more than {FIELD_LABELS['steps']} = "
                   f"{steps}: the KL panel will stay empty.")
    return out


def _relabel(exc: ValueError) -> ValueError:
    """The error with its leading ``field:`` replaced by the page's label for the field."""
    text = str(exc)
    field, sep, rest = text.partition(":")
    if sep and field in FIELD_LABELS:
        return ValueError(f"{FIELD_LABELS[field]} ({field}):{rest}")
    return ValueError(text)


# ---------------------------------------------------------------------------- configs


def train_config(method: str, *, thresholds=(0.6,), objective_weights=(0.5, 0.5), n_objectives: int = 2,
                 tau: float = 0.08, steps: int = 100, batch_size: int = 8, lr: float = 1e-3, lambda_lr: float = 1.0,
                 t0: int = 0, beta_ratchet: float = 0.0, eps: float = 0.0, chi_lr: float = 0.5,
                 online: bool = False, n_candidates: int = 8,
                 max_new_tokens: int = 16, gradient_accumulation_steps: int = 1, kl_every: int = 0, seed: int = 0,
                 checkpoint_every: int = 25, heldout_every: int = 0, win_rate_prior: float = 1.0,
                 kl_leash: bool = True):
    """A checked :class:`mopo_core.lm.config.TrainConfig` from the page's values for a task
    with ``n_objectives`` objectives (V0 the primary). ``t0``, ``beta_ratchet``, ``kl_every`` and
    ``heldout_every`` of 0 mean off, and so does ``eps`` (MOPO's robust radius); ``thresholds`` (one per secondary objective, win-rates in [0, 1]) are used by
    MOPO, ``objective_weights`` (one per objective, summing to 1; with two objectives the page's
    w on the secondary gives (1 - w, w): :func:`secondary_weights`) by weighted DPO and MODPO,
    the online settings by MOPO only. ``ValueError`` names the page's field."""
    if method not in METHODS:
        raise ValueError(f"{FIELD_LABELS['method']} (method): expected one of {', '.join(METHODS)}, got {method!r}")
    weights = None
    if method in WEIGHTED_METHODS:
        weights = tuple(float(w) for w in objective_weights)
        if any(not 0.0 <= w <= 1.0 or math.isnan(w) for w in weights):
            raise ValueError(f"{FIELD_LABELS['objective_weights']} (objective_weights): each must lie in [0, 1], "
                             f"got {list(weights)}")
    for name, value in (("t0", t0), ("kl_every", kl_every), ("heldout_every", heldout_every)):
        if value is not None and int(value) < 0:
            raise ValueError(f"{FIELD_LABELS[name]} ({name}): must be >= 0 (0: off), got {value}")
    if beta_ratchet and not t0:
        raise ValueError(f"{FIELD_LABELS['beta_ratchet']} (beta_ratchet): the ratchet acts every t0 steps; set "
                         f"{FIELD_LABELS['t0']} > 0 or the ratchet to 0 (off)")
    mopo = method == "mopo"
    config = TrainConfig(
        method=method, thresholds=tuple(float(b) for b in thresholds) if mopo else (0.5,) * (n_objectives - 1),
        objective_weights=weights,
        tau=float(tau), steps=int(steps), batch_size=int(batch_size), lr=float(lr), lambda_lr=float(lambda_lr),
        t0=int(t0) if mopo and t0 else None, beta_ratchet=float(beta_ratchet) if mopo and beta_ratchet else None,
        eps=float(eps) if mopo else 0.0, chi_lr=float(chi_lr),
        online=bool(online) and mopo, n_candidates=int(n_candidates), max_new_tokens=int(max_new_tokens),
        gradient_accumulation_steps=int(gradient_accumulation_steps),
        kl_every=int(kl_every) if kl_every and not (online and mopo) else None, seed=int(seed),
        checkpoint_every=int(checkpoint_every), heldout_every=int(heldout_every) if heldout_every else None,
        win_rate_prior=float(win_rate_prior), kl_leash=bool(kl_leash))
    for j, b in enumerate(config.thresholds if mopo else (), start=1):
        if not 0.0 <= b <= 1.0:
            raise ValueError(f"{FIELD_LABELS['thresholds']}{j} (thresholds): a win-rate threshold lies in [0, 1], "
                             f"got {b}")
    try:
        config.validate(n_objectives)
    except ValueError as exc:
        raise _relabel(exc) from None
    return config


def secondary_weights(w: float) -> tuple[float, float]:
    """Two objectives' weights (1 - w, w) from the page's weight w on the secondary."""
    return (1.0 - float(w), float(w))


def dataset_setup(**values):
    """A checked :class:`mopo_core.training.dataset_task.DatasetSetup` from the page's dataset form
    (``lora_r`` 0: full fine-tuning; empty ``objective``: none). Its fields only: the data,
    checkpoint and judge are checked by :func:`mopo_core.training.dataset_task.check_setup`.
    ``ValueError`` names the page's field (:data:`DATASET_LABELS`)."""
    from mopo_core.training.dataset_task import DatasetSetup, SetupError

    values = dict(values)
    values["lora_r"] = int(values.get("lora_r") or 0) or None  # the page's 0 means full fine-tuning
    values["objective"] = (values.get("objective") or "").strip() or None
    values["split"] = tuple(float(f) for f in values.get("split", (0.8, 0.1, 0.1)))
    setup = DatasetSetup(**values)
    try:
        setup.validate()
    except SetupError as exc:
        raise dataset_error(exc) from None
    return setup


def dataset_error(exc) -> ValueError:
    """A :class:`mopo_core.training.dataset_task.SetupError` restated with the page's label for its field."""
    return ValueError(f"{DATASET_LABELS.get(exc.field, exc.field)} ({exc.field}): {exc.detail}")


def text_setup(n_prompts: int = 40, n_candidates: int = 8, pairs_per_prompt: int = 8, temperature: float = 0.1,
               sft_steps: int = 300, eval_samples: int = 8, seed: int = 0):
    """A checked :class:`mopo_core.training.text_task.TextTaskSetup`; ``ValueError`` names the page's field."""
    from mopo_core.training.text_task import TextTaskSetup
    from mopo_core.validation import check_int

    labels = {"n_prompts": FIELD_LABELS["n_prompts"], "n_candidates": "Candidate responses per prompt",
              "temperature": FIELD_LABELS["temperature"], "seed": FIELD_LABELS["task_seed"],
              "pairs_per_prompt": FIELD_LABELS["pairs_per_prompt"], "sft_steps": FIELD_LABELS["sft_steps"],
              "eval_samples": FIELD_LABELS["eval_samples"]}
    try:
        if int(n_prompts) < MIN_PROMPTS:
            raise ValueError(f"n_prompts: at least {MIN_PROMPTS} (the held-out test prompts are whole prompts), "
                             f"got {n_prompts}")
        TextTask(n_prompts=int(n_prompts), n_candidates=int(n_candidates), temperature=float(temperature),
                 seed=int(seed))
        for name, value in (("pairs_per_prompt", pairs_per_prompt), ("sft_steps", sft_steps),
                            ("eval_samples", eval_samples)):
            check_int(int(value), name, 1)
    except ValueError as exc:
        field, sep, rest = str(exc).partition(":")
        if sep and field in labels:
            raise ValueError(f"{labels[field]} ({field}):{rest}") from None
        raise
    return TextTaskSetup(n_prompts=int(n_prompts), n_candidates=int(n_candidates),
                         pairs_per_prompt=int(pairs_per_prompt), temperature=float(temperature),
                         sft_steps=int(sft_steps), eval_samples=int(eval_samples), seed=int(seed))


def parse_numbers(text: str, field: str, low: float = 0.0, high: float = 1.0) -> tuple[float, ...]:
    """Comma- or space-separated numbers in [low, high], in the order given; ``ValueError``
    naming ``field`` for an empty list, a word that is not a number, a value out of range or a
    repeated value (nothing is dropped)."""
    words = [w for w in str(text).replace(",", " ").split() if w]
    if not words:
        raise ValueError(f"{field}: give at least one number (comma-separated)")
    values = []
    for word in words:
        try:
            value = float(word)
        except ValueError:
            raise ValueError(f"{field}: {word!r} is not a number") from None
        if not low <= value <= high:
            raise ValueError(f"{field}: {word} is outside [{low:g}, {high:g}]")
        if value in values:
            raise ValueError(f"{field}: {word} is repeated")
        values.append(value)
    return tuple(values)


def parse_weights(text: str, n_objectives: int, field: str) -> tuple[float, ...]:
    """``n_objectives`` comma- or space-separated weights in [0, 1] summing to 1 (repeats
    allowed); ``ValueError`` naming ``field`` otherwise."""
    words = [w for w in str(text).replace(",", " ").split() if w]
    try:
        weights = tuple(float(w) for w in words)
    except ValueError:
        raise ValueError(f"{field}: {text!r} holds a word that is not a number") from None
    if len(weights) != n_objectives:
        raise ValueError(f"{field}: give {n_objectives} weights (one per objective), got {len(weights)}")
    if any(not 0.0 <= w <= 1.0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"{field}: each weight lies in [0, 1] and they sum to 1, got {list(weights)}")
    return weights


def job_name(config) -> str:
    """A short name for a job: the method and what sets it apart (threshold, weights, τ, steps)."""
    name = SHORT_NAMES.get(config.method, config.method)
    if config.method == "mopo":
        name += "".join(f" b{j}={b:g}" for j, b in enumerate(config.thresholds, start=1))
        name += " online" if config.online else ""
        if config.t0:
            name += f" t0={config.t0}" + (f" β={config.beta_ratchet:g}" if config.beta_ratchet else "")
        if config.eps:
            name += f" ε={config.eps:g}"
    elif config.method in WEIGHTED_METHODS:
        name += f" w=({', '.join(f'{w:g}' for w in config.objective_weights)})"
    return f"{name} τ={config.tau:g} · {config.steps} steps"


def job_settings(config: dict | None) -> str:
    """The settings a job's name (:func:`job_name`) leaves out, as the queue shows them under it:
    ``lr 0.001 · batch 8 · seed 0`` (with ``(×2 accumulated)`` after the batch when it is split); '' without
    a config."""
    if not config:
        return ""
    accumulated = int(config.get("gradient_accumulation_steps") or 1)
    return (f"lr {config.get('lr', TrainConfig.lr):g} · batch {config.get('batch_size', TrainConfig.batch_size)}"
            + (f" (×{accumulated} accumulated)" if accumulated > 1 else "")
            + f" · seed {config.get('seed', TrainConfig.seed)}")


def sweep_configs(base, thresholds, weights=(), baselines=SWEEP_BASELINES,
                  weight_label: str = "Weights w on the secondary objective") -> list[tuple[str, object]]:
    """(name, TrainConfig) for a sweep from ``base`` (a two-objective MOPO config: its τ, steps,
    batch, lr, seed, ...): MOPO at each threshold b1, then per baseline in ``baselines``: DPO
    once, MODPO and weighted DPO at each secondary weight w in ``weights`` (objective weights
    (1 - w, w)). Checked like :func:`train_config`; ``weight_label`` names the weights field."""
    unknown = [b for b in baselines if b not in SWEEP_BASELINES]
    if unknown:
        raise ValueError(f"baselines: unknown {unknown}; choose from {', '.join(SWEEP_BASELINES)}")
    if len(base.thresholds) != 1:
        raise ValueError(f"Sweep: sweeps a threshold b1 on a two-objective task; this task has "
                         f"{len(base.thresholds) + 1} objectives")
    if any(b in WEIGHTED_METHODS for b in baselines) and not len(weights):
        raise ValueError(f"{weight_label}: give at least one for MODPO / weighted DPO")
    form = {"tau": base.tau, "steps": base.steps, "batch_size": base.batch_size, "lr": base.lr,
            "lambda_lr": base.lambda_lr, "gradient_accumulation_steps": base.gradient_accumulation_steps,
            "chi_lr": base.chi_lr,
            "kl_every": base.kl_every or 0, "seed": base.seed, "checkpoint_every": base.checkpoint_every,
            "heldout_every": base.heldout_every or 0}
    out = []
    for b in thresholds:
        out.append(train_config("mopo", thresholds=(b,), t0=base.t0 or 0, beta_ratchet=base.beta_ratchet or 0.0,
                                eps=base.eps, win_rate_prior=base.win_rate_prior, kl_leash=base.kl_leash, **form))
    for method in baselines:
        grid = weights if method in WEIGHTED_METHODS else (0.5,)
        for w in grid:
            out.append(train_config(method, objective_weights=secondary_weights(w), **form))
    return [(job_name(c), c) for c in out]


# ---------------------------------------------------------------------------- the queue


def queue_frame(store_path, job_list: list[jobs.Job] | None = None) -> pd.DataFrame:
    """One row per job, oldest first: job, name, settings (:func:`job_settings`; a resume job: its run's),
    kind, method, status, run, run_status, step
    (the run's last logged step; 0 before its first), steps, progress (step / steps), evaluating
    (the job runs and its run has trained but has no point yet: the evaluation is sampling), error,
    resumable (the job is its run's latest and the run can be resumed now), preparing (a running
    job without its run yet: the worker's recorded fraction of its preparation in [0, 1], NaN when
    not measured or not preparing), preparing_text (what it is preparing, '' when not preparing),
    created_at, ended_at."""
    job_list = jobs.list_jobs(store_path) if job_list is None else job_list
    run_ids = [j.run_id for j in job_list if j.run_id is not None]
    runs = RunStore(store_path).progress(run_ids) if run_ids else {}
    active_runs = {j.run_id for j in job_list if j.status in jobs.ACTIVE_STATUSES and j.run_id is not None}
    latest = {j.run_id: j.id for j in job_list if j.run_id is not None}
    rows = []
    for j in job_list:
        run = runs.get(j.run_id, {})
        run_config = run.get("config") or {}
        steps = (j.config or {}).get("steps", run_config.get("steps"))
        method = (j.config or {}).get("method", run_config.get("method"))
        step = int(run.get("step") or 0)
        preparing = j.status == "running" and j.run_id is None
        rows.append({
            "job": j.id, "name": j.name or "", "settings": job_settings(j.config or run_config), "kind": j.kind,
            "method": method, "status": j.status,
            "run": j.run_id, "run_status": run.get("status"), "step": step, "steps": steps,
            "progress": step / steps if steps else 0.0,
            "evaluating": j.status == "running" and run.get("status") == "finished" and not run.get("n_points"),
            "error": j.error or ("cancel requested: stops after the current step" if j.cancel_requested
                                 and j.status == "running" else ""),
            "resumable": bool(j.run_id is not None and latest.get(j.run_id) == j.id and j.run_id not in active_runs
                              and run.get("status") in jobs.RESUMABLE_RUN_STATUSES),
            "preparing": j.progress if preparing and j.progress is not None else float("nan"),
            "preparing_text": (j.progress_text or "") if preparing else "",
            "created_at": j.created_at, "ended_at": j.ended_at,
        })
    columns = ["job", "name", "settings", "kind", "method", "status", "run", "run_status", "step", "steps", "progress",
               "evaluating", "error", "resumable", "preparing", "preparing_text", "created_at", "ended_at"]
    return pd.DataFrame(rows, columns=columns).astype({"run": "Int64"})


def default_run(queue: pd.DataFrame) -> int | None:
    """The run to show: the running job's run, else the newest job's run that has one."""
    with_run = queue[queue["run"].notna()]
    running = with_run[with_run["status"] == "running"]
    pick = running if len(running) else with_run
    return None if pick.empty else int(pick["run"].iloc[-1])


def worker_log_tail(store_path, lines: int = 40) -> str:
    """The last ``lines`` lines of the store's worker log ('' when there is none yet)."""
    path = jobs.jobs_dir(store_path) / "worker.log"
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 200 * lines))
        text = f.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------- a run's series


def metric_frame(run: Run) -> pd.DataFrame:
    """The run's metrics as one row per logged step (columns: step, then one per metric name)."""
    m = run.metrics
    if m.empty:
        return pd.DataFrame({"step": pd.Series(dtype="int64")})
    wide = m.pivot_table(index="step", columns="name", values="value", aggfunc="last", dropna=False)
    wide.columns.name = None
    return wide.reset_index()


def constraint_count(frame: pd.DataFrame) -> int:
    """How many constraints (``constraint_j`` series) the frame holds."""
    return sum(1 for c in frame.columns if c.startswith("constraint_"))


def live_constraints(frame: pd.DataFrame) -> list[dict]:
    """Per constraint j (1-based), at the last step that logged it: ``j``, ``step``,
    ``estimate`` (the secondary's win-rate estimate on the step's batch), ``threshold`` (in
    force then), ``lam``, and ``below``: for how many of the last logged steps in a row the
    estimate stayed under its threshold (λ grows at each of them)."""
    out = []
    for j in range(1, constraint_count(frame) + 1):
        rows = frame[frame[f"constraint_{j}"].notna()]
        if rows.empty:
            continue
        last = rows.iloc[-1]
        under = (rows[f"constraint_{j}"] < rows[f"threshold_{j}"]).to_numpy() if f"threshold_{j}" in rows else []
        below = len(under) - (np.flatnonzero(~under)[-1] + 1) if len(under) and not under.all() else len(under)
        out.append({"j": j, "step": int(last["step"]), "estimate": float(last[f"constraint_{j}"]),
                    "threshold": float(last.get(f"threshold_{j}", np.nan)), "lam": float(last.get(f"lambda_{j}", np.nan)),
                    "below": int(below)})
    return out


def live_heldout(frame: pd.DataFrame) -> dict | None:
    """The last held-out estimate a run logged (``heldout_every``): ``step``, ``values`` (K,)
    and ``stderr`` (K,), the objectives' win-rates against the reference on held-out prompts,
    the scale of the plane; ``None`` when the run logged none."""
    if "heldout_0" not in frame:
        return None
    rows = frame[frame["heldout_0"].notna()]
    if rows.empty:
        return None
    last = rows.iloc[-1]
    k = sum(1 for c in frame.columns if c.startswith("heldout_") and c[len("heldout_"):].isdigit())
    return {"step": int(last["step"]), "values": [float(last[f"heldout_{i}"]) for i in range(k)],
            "stderr": [float(last.get(f"heldout_se_{i}", np.nan)) for i in range(k)]}


# ---------------------------------------------------------------------------- the Pareto plane


#: DatasetSetup fields that decide how a dataset run's point is measured: the test prompts
#: (data, split), the reference and its samples, and the judge. (LoRA, dtype and the training
#: settings are what runs on one plane differ in.)
_MEASUREMENT_FIELDS = ("data", "format", "objective", "split", "split_seed", "max_response_tokens", "prefmodel",
                       "eval_samples", "max_new_tokens", "eval_seed")


def run_objectives(run: Run) -> tuple[str, ...]:
    """The objectives a train run was trained on (V0 first); the text task's for older runs."""
    return tuple((run.config or {}).get("objectives") or OBJECTIVES)


def plane_key(run: Run) -> tuple | None:
    """What a train run's point must share with another's to be on the same plane: the task and
    objectives, then what its task says the point's values depend on
    (:meth:`mopo_core.training.tasks.TrainingTask.measurement`: nothing more for the text task;
    for a dataset run the checkpoint and how the point was measured, the same test prompts,
    reference samples and judge); ``None`` for other runs."""
    task = task_of(run)
    if task is None:
        return None
    return (task.name, run_objectives(run), *(json_key(value) for value in task.measurement(run.config)))


def json_key(value):
    """A hashable form of a JSON value (lists as tuples)."""
    return tuple(json_key(v) for v in value) if isinstance(value, list) else value


def describe_plane(key: tuple) -> str:
    """One line saying which runs a plane holds."""
    if key[0] == "text":
        return "runs on the synthetic text task"
    setup = dict(zip(_MEASUREMENT_FIELDS, key[3:]))
    return (f"runs of {Path(key[2] or '?').name} on {Path(setup['data'] or '?').name} (split {list(setup['split'])}, "
            f"seed {setup['split_seed']}), judged by {Path(setup['prefmodel'] or '?').name}")


def run_thresholds(run: Run) -> tuple[float, ...]:
    """The thresholds b1, b2, ... a MOPO run was started with (its config; a ratchet may have
    raised them during training, see its threshold curves); () for the other methods."""
    config = run.config or {}
    return tuple(float(b) for b in config.get("thresholds") or ()) if config.get("method") == "mopo" else ()


def threshold_verdict(value: float, stderr: float, threshold: float) -> str:
    """Whether a held-out win-rate ``value`` (± ``stderr``) met ``threshold``: "yes" or "no",
    with "(within 1 SE)" when the gap is smaller than one standard error (the evaluation
    cannot tell); "–" when there is no threshold or no value."""
    if not np.isfinite(threshold) or not np.isfinite(value):
        return "–"
    verdict = "yes" if value >= threshold else "no"
    return verdict + (" (within 1 SE)" if np.isfinite(stderr) and abs(value - threshold) < stderr else "")


def diverged_on_plane(runs: list[Run], key: tuple) -> list[Run]:
    """The diverged runs among ``runs`` on the plane ``key`` (hidden from it unless asked)."""
    return [run for run in split_diverged(runs)[1] if plane_key(run) == key]


def front_points(runs: list[Run], job_names: dict[int, str] | None = None, key: tuple | None = None,
                 include_diverged: bool = False) -> pd.DataFrame:
    """The evaluated points of the runs among ``runs`` whose :func:`plane_key` is ``key``
    (default: the text task's), diverged runs (``compare_runs.is_diverged``) left out unless
    ``include_diverged``: run, job_name, method, label, v0 (primary), v1 (first
    secondary; NaN for one objective) win-rates against the reference, their standard errors,
    params_text, on_front (non-dominated among these points); then per secondary objective j:
    ``b{j}`` (a MOPO run's threshold, NaN for the other methods), ``met b{j}`` (whether the
    held-out win-rate V_j reached it: :func:`threshold_verdict`); ``met`` (True when every
    threshold was met, False when one was missed, None without thresholds) and
    ``thresholds_text`` (one line for the plane's hover)."""
    key = ("text", OBJECTIVES) if key is None else key
    n_secondary = max(len(key[1]) - 1, 0)
    rows = []
    for run in split_diverged(runs, include_diverged)[0]:
        if plane_key(run) != key or run.points.empty:
            continue
        thresholds = run_thresholds(run)
        for _, p in run.points.iterrows():
            extra = p["extra"] or {}
            values = [_num(v) for v in (p["values"] if p["values"] is not None else [p["v0"], p["v1"]])]
            stderr = [_num(v) for v in (extra.get("win_rate_stderr") or [])]
            stderr += [np.nan] * (n_secondary + 2 - len(stderr))
            values += [np.nan] * (n_secondary + 2 - len(values))
            row = {"run": run.id, "job_name": (job_names or {}).get(run.id, ""),
                   "method": run.config.get("method", p["label"]), "label": p["label"],
                   "v0": float(p["v0"]), "v1": _num(p["v1"]), "stderr0": stderr[0],
                   "stderr1": stderr[1], "params_text": format_params(p["params"])}
            met, lines = [], []
            for j in range(1, n_secondary + 1):
                b = thresholds[j - 1] if j - 1 < len(thresholds) else np.nan
                verdict = threshold_verdict(values[j], stderr[j], b)
                row[f"b{j}"], row[f"met b{j}"] = b, verdict
                if np.isfinite(b):
                    met.append(verdict.startswith("yes"))
                    lines.append(f"b{j} = {b:g} on held-out V{j} {values[j]:.3f} ± {stderr[j]:.3f}: "
                                 f"{'met' if met[-1] else 'missed'}"
                                 + (" (within 1 SE)" if verdict.endswith("SE)") else ""))
            row["met"] = all(met) if met else None
            row["thresholds_text"] = "<br>".join(lines) or "no threshold (not MOPO)"
            rows.append(row)
    threshold_columns = [c for j in range(1, n_secondary + 1) for c in (f"b{j}", f"met b{j}")]
    frame = pd.DataFrame(rows, columns=["run", "job_name", "method", "label", "v0", "v1", "stderr0", "stderr1",
                                        "params_text", *threshold_columns, "met", "thresholds_text"])
    columns = ["v0", "v1"] if len(key[1]) > 1 else ["v0"]
    frame["on_front"] = union_front_mask(frame[columns].to_numpy(dtype=float)) if len(frame) else []
    return frame


def _num(value) -> float:
    return np.nan if value is None or pd.isna(value) else float(value)


def front_staircase(points: pd.DataFrame, floor=(0.0, 0.0)) -> np.ndarray:
    """The non-dominated points' staircase in the plane (x = V1, y = V0) above ``floor`` (x, y)."""
    front = points[points["on_front"]] if len(points) else points
    return staircase(front[["v1", "v0"]].to_numpy(dtype=float), floor)
