"""Training runs on a preference-data file with a local Hugging Face checkpoint, judged by a
trained preference model. Used by ``python -m mopo_core train --data FILE --model NAME_OR_DIR
--prefmodel DIR`` and by ``bench/pku_smollm2.py``; nothing is downloaded.

Data. The file is read in this project's schema (``"mopo"``) or a public format (see
:func:`load_data`), split by prompt into train/validation/test (``split`` fractions, seeded
by ``split_seed``: :meth:`PreferenceDataset.split`) and every response is cut to its first
``max_response_tokens`` tokens of the model's tokenizer (pairs whose two cut responses
coincide carry no preference and are dropped). The policy trains on the train split only;
the evaluation uses the test prompts only.

Prompts. Each user prompt is wrapped in the model's chat template
(:func:`mopo_core.lm.registry.format_prompt`, the text unchanged for a model without one)
for training and for sampling; :func:`mopo_core.lm.models.sequence_ids` then encodes it without
a second bos. The preference model always sees the raw user prompt, as in its training data.

Training. :class:`mopo_core.lm.trainer.Trainer` with any of its methods, from the checkpoint
(full fine-tuning, or LoRA adapters of rank ``lora_r``); the reference is the starting
checkpoint. MODPO's margin comes from one DPO expert per secondary objective trained with the
run's budget (:func:`mopo_core.training.common.secondary_experts`, DPO implicit rewards); online
MOPO scores its candidates with the preference model (the judge of the evaluation, so online
win-rates are optimistic).

Evaluation. ``eval_samples`` responses per test prompt from the policy and from the
reference (temperature 1, at most ``max_new_tokens`` tokens, seeded by ``eval_seed``; the
reference's are drawn once per :class:`DatasetTask`). Objective k's win-rate is the mean over
all (policy sample, reference sample) pairs of ``P_k(a beats b) = sigmoid(r_k(x, a) -
r_k(x, b))``, the preference model's Bradley-Terry oracle, averaged per prompt and then
over prompts, with the prompt-level standard error: the definitions of
:func:`mopo_core.lm.evaluation.evaluate_policy`, computed from one batch of samples and one
reward per response. A preference model fitted on any evaluation prompt (or without a record
of its prompts) is refused. The run's config names the preference model and its held-out
accuracies (its own test split, and the pairs of this run's test split).

Records. A ``train`` run in the :class:`RunStore` with the training config, ``task:
"dataset"``, the :class:`DatasetSetup`, the checkpoint folder, the metric series and the
evaluated point (values: win-rates against the reference, in the data's objective order). A
cancelled or killed run with a checkpoint folder continues from its checkpoint
(:func:`train_on_dataset` with ``resume_run_id``: ``train --resume RUN_ID``, the queue's
``resume`` jobs; the run's checks are :meth:`mopo_core.training.tasks.TrainingTask.resume`'s),
rebuilt from the stored setup; it is evaluated when it finishes. Checkpoints are read with
``torch.load(weights_only=True)`` only (:func:`mopo_core.lm.trainer.read_checkpoint`). This is
the dataset task of :mod:`mopo_core.training.tasks`.
"""
from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from scipy.special import expit

from mopo_core.data.preferences import PreferenceDataset
from mopo_core.data.public_formats import FORMATS
from mopo_core.lm.config import TrainConfig, frozen_copies, leashed
from mopo_core.lm.evaluation import Evaluation
from mopo_core.lm.judge import (NATIVE_FORMAT, PreferenceModel, load_dataset, read_meta, seen_prompts,
                                 uninformative_objectives)
from mopo_core.lm.devices import DTYPES, resolve_device
from mopo_core.lm.lora import LoraSettings, apply_lora
from mopo_core.lm.models import enable_gradient_checkpointing, load_model, load_tokenizer, sample, sequence_ids
from mopo_core.lm.registry import find_model, format_prompt
from mopo_core.lm.trainer import Trainer, TrainResult, implicit_rewards, read_checkpoint
from mopo_core.runs import RunStore
from mopo_core.training.common import point_params, secondary_experts
from mopo_core.training.divergence import DIVERGED, finite_weights, train_watched
from mopo_core.validation import check_int

#: ``format`` values: "auto", this project's schema, the public formats.
DATA_FORMATS = ("auto", NATIVE_FORMAT, *FORMATS)


class SetupError(ValueError):
    """A bad :class:`DatasetSetup` field: ``field`` names it (the command line's flag is
    ``--`` + the field with ``_`` as ``-``), ``detail`` says what is wrong."""

    def __init__(self, field: str, detail: str):
        super().__init__(f"{field}: {detail}")
        self.field, self.detail = field, detail


@dataclass(frozen=True)
class DatasetSetup:
    """What a dataset run trains on and how it is evaluated.

    data: preference file; format: one of :data:`DATA_FORMATS`; objective: the one objective
    of single-objective public formats; model: a checkpoint folder or a models-registry name;
    prefmodel: a folder saved by :class:`PreferenceModel`; lora_r: LoRA rank (None: full
    fine-tuning); split: train/validation/test fractions by prompt, split_seed its seed;
    max_response_tokens: responses cut to that many tokens; eval_samples: samples per test
    prompt and model; max_new_tokens: their length cap; eval_seed: their seed; dtype, device:
    as :func:`mopo_core.lm.models.load_model` takes them; gradient_checkpointing: the policy
    recomputes each layer's activations in backward (less memory, slower steps).
    """

    #: The task that trains on this setup (:func:`mopo_core.training.tasks.task_for_setup`).
    task: ClassVar[str] = "dataset"

    data: str
    model: str
    prefmodel: str
    format: str = "auto"
    objective: str | None = None
    lora_r: int | None = None
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    max_response_tokens: int = 64
    eval_samples: int = 4
    max_new_tokens: int = 24
    eval_seed: int = 0
    dtype: str = "auto"
    device: str = "auto"
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        """``SetupError`` naming the first bad field (a CUDA device is checked to exist)."""
        if self.format not in DATA_FORMATS:
            raise SetupError("format", f"expected one of {', '.join(DATA_FORMATS)}, got {self.format!r}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise SetupError("dtype", f"expected auto or one of {', '.join(DTYPES)}, got {self.dtype!r}")
        try:
            device = resolve_device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise SetupError("device", f"expected auto, cpu or cuda[:N], got {self.device!r} ({exc})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SetupError("device", f"{self.device!r}: this machine has no CUDA device (use auto or cpu)")
        if len(self.split) != 3:
            raise SetupError("split", f"expected three fractions (train, validation, test), got {list(self.split)}")
        minimum = {"split_seed": 0, "max_response_tokens": 1, "eval_samples": 1, "max_new_tokens": 1, "eval_seed": 0}
        if self.lora_r is not None:
            minimum["lora_r"] = 1
        for name, low in minimum.items():
            try:
                check_int(getattr(self, name), name, low)
            except ValueError as exc:
                raise SetupError(name, str(exc).removeprefix(f"{name}: ")) from None


# --------------------------------------------------------------------------- data


def load_data(path: str | Path, fmt: str = "auto", objective: str | None = None) -> PreferenceDataset:
    """A preference file as a dataset. ``fmt="auto"``: this project's schema for a
    ``.parquet`` file or JSON lines whose first record has ``response_a``, ``response_b``
    and ``labels``; otherwise the public format its keys tell (:func:`load_public`)."""
    path = Path(path)
    if fmt == "auto" and _native_schema(path):
        fmt = NATIVE_FORMAT
    return load_dataset(path, fmt, objective)


def _native_schema(path: Path) -> bool:
    """Whether ``path`` looks like this project's schema (see :func:`load_data`)."""
    if path.suffix == ".parquet":
        return True
    if path.suffix != ".jsonl" or not path.is_file():
        return False
    with open(path, "rb") as handle:
        first = next((line for line in handle if line.strip()), b"")
    try:
        record = json.loads(first)
    except (ValueError, RecursionError):  # not JSON, or nested too deeply: the public loaders name the problem
        return False
    return isinstance(record, dict) and {"response_a", "response_b", "labels"} <= set(record)


def truncate_responses(dataset: PreferenceDataset, tokenizer, max_tokens: int) -> tuple[PreferenceDataset, tuple[str, ...]]:
    """Every response cut to its first ``max_tokens`` tokens (decoded back to text), and the
    origins (:meth:`PreferenceDataset.origin_of`) of the pairs left out because their two cut
    responses are the same text."""

    def cut(text: str) -> str:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])

    pairs, dropped = [], []
    for index, pair in enumerate(dataset):
        a, b = cut(pair.response_a), cut(pair.response_b)
        if a != b:
            pairs.append(replace(pair, response_a=a, response_b=b))
        else:
            dropped.append(dataset.origin_of(index))
    return PreferenceDataset(dataset.objectives, tuple(pairs)), tuple(dropped)


class Splits(tuple):
    """``(train, validation, test)`` as :func:`load_splits` returns them; ``dropped``: the
    origins of the pairs left out because their responses are the same text once cut."""

    dropped: tuple[str, ...] = ()


def chat_dataset(dataset: PreferenceDataset, tokenizer) -> PreferenceDataset:
    """The dataset with every prompt wrapped in the tokenizer's chat template (:func:`format_prompt`)."""
    return PreferenceDataset(dataset.objectives,
                             tuple(replace(p, prompt=format_prompt(tokenizer, p.prompt)) for p in dataset))


def load_splits(setup: DatasetSetup, tokenizer) -> Splits:
    """(train, validation, test) of ``setup.data``: raw prompts, responses cut to
    ``setup.max_response_tokens`` tokens (pairs that become identical are left out and named
    in ``dropped``). ``SetupError`` (field ``data``) for an unreadable
    file or one with an empty split."""
    try:
        dataset = load_data(setup.data, setup.format, setup.objective)
    except (OSError, ValueError) as exc:
        raise SetupError("data", str(exc)) from None
    try:
        parts = dataset.split(setup.split, seed=setup.split_seed)
    except ValueError as exc:
        raise SetupError("split", str(exc).removeprefix("fractions: ")) from None
    cut = [truncate_responses(part, tokenizer, setup.max_response_tokens) for part in parts]
    splits = Splits(part for part, _ in cut)
    splits.dropped = tuple(origin for _, dropped in cut for origin in dropped)
    for name, part in zip(("train", "validation", "test"), splits):
        if name != "validation" and len(part) == 0:
            raise SetupError("data", f"{setup.data}: the {name} split is empty ({len(dataset)} pairs, "
                                     f"split {list(setup.split)}); use a bigger file or other fractions")
    return splits


# --------------------------------------------------------------------------- model and judge


def model_directory(model: str, folder: str | Path | None = None) -> Path:
    """The checkpoint folder ``model`` names: itself when it is a folder, else the models
    registry's entry of that name (:func:`find_model`). ``SetupError`` (field ``model``)
    for an unknown name, the built-in text-task model or a broken entry."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    try:
        entry = find_model(model, folder)
    except ValueError as exc:
        raise SetupError("model", f"{model!r} is not a checkpoint folder, and as a name: "
                                  f"{str(exc).removeprefix('model: ')}") from None
    if entry.path is None:
        raise SetupError("model", f"{model!r} is the built-in text-task model; it trains on the synthetic task "
                                  "(leave out --data)")
    if entry.problem is not None:
        raise SetupError("model", f"{entry.path}: {entry.problem}")
    return Path(entry.path)


def check_judge(path: str | Path, objectives: tuple[str, ...], eval_prompts: list[str]) -> dict:
    """The saved preference model's metadata (:func:`read_meta`; neither encoder nor heads are
    loaded), after checking that it scores ``objectives`` and was fitted on none of
    ``eval_prompts``. ``SetupError`` (field ``prefmodel``) otherwise."""
    try:
        meta = read_meta(path)
    except (OSError, ValueError) as exc:
        raise SetupError("prefmodel", str(exc)) from None
    missing = [o for o in objectives if o not in meta["objectives"]]
    if missing:
        raise SetupError("prefmodel", f"{path}: scores {', '.join(meta['objectives'])}; the data's objectives "
                                      f"{', '.join(missing)} are missing")
    if "seen_prompt_digests" not in meta["info"]:
        raise SetupError("prefmodel", f"{path}: holds no record of the prompts it was fitted on, so it cannot be "
                                      "shown to be unseen by the evaluation; retrain it with this version")
    uninformative = uninformative_objectives(meta["info"])
    if uninformative:
        raise SetupError("prefmodel", f"{path}: no better than a constant judge on its validation split ("
                                      + "; ".join(f"{o}: {why}" for o, why in uninformative.items())
                                      + "): it would score every policy at 0.5; retrain it on more or cleaner data")
    seen = seen_prompts(meta["info"], eval_prompts)
    if seen:
        fitted = meta["info"].get("data") or {}
        hint = (f" (it was fitted with split {fitted['split']} and split_seed {fitted['split_seed']}: use those)"
                if {"split", "split_seed"} <= set(fitted) else "")
        raise SetupError("prefmodel", f"{path}: was fitted on {len(seen)} of the {len(eval_prompts)} evaluation "
                                      f"prompts (e.g. {seen[0][:60]!r}); fit it on the training split only "
                                      f"(same data, split and split_seed){hint} or evaluate on other prompts")
    return meta


def load_judge(path: str | Path, objectives: tuple[str, ...], eval_prompts: list[str]) -> PreferenceModel:
    """The preference model at ``path``, after :func:`check_judge`."""
    check_judge(path, objectives, eval_prompts)
    try:
        return PreferenceModel.load(path)
    except (OSError, ValueError) as exc:
        raise SetupError("prefmodel", str(exc)) from None


@dataclass(frozen=True)
class SetupCheck:
    """What :func:`check_setup` found: the checkpoint folder, the data's objectives (V0 the
    primary), the pairs per split (train, validation, test) after cutting the responses, and
    the training split's shape in tokens: the longest chat-formatted prompt, the longest cut
    response (eos included) and the mean number of distinct responses per prompt (a MOPO
    step's rows per prompt); ``dropped_after_cut``: the origins of the pairs left out because
    their two responses are the same text once cut."""

    model_dir: Path
    objectives: tuple[str, ...]
    n_pairs: tuple[int, int, int]
    max_prompt_tokens: int = 0
    max_response_tokens: int = 0
    rows_per_prompt: float = 2.0
    dropped_after_cut: tuple[str, ...] = ()


def check_setup(setup: DatasetSetup, models_folder: str | Path | None = None) -> SetupCheck:
    """Everything about ``setup`` that can be checked without loading the model's weights or
    the judge's encoder: the fields, the checkpoint folder (and its tokenizer), the data and its
    splits, the judge's objectives and that it never saw a test prompt. ``SetupError`` names the
    first bad field. What a job queue calls before accepting a run."""
    setup.validate()
    model_dir = model_directory(setup.model, models_folder)
    try:
        tokenizer = load_tokenizer(model_dir)
    except (OSError, ValueError) as exc:
        raise SetupError("model", f"{model_dir}: no usable tokenizer ({exc})") from None
    splits = load_splits(setup, tokenizer)
    check_judge(setup.prefmodel, splits[0].objectives, splits[2].prompts())
    train = splits[0]
    responses = {p: set() for p in train.prompts()}
    for pair in train:
        responses[pair.prompt] |= {pair.response_a, pair.response_b}
    eos = int(tokenizer.eos_token_id is not None)
    return SetupCheck(
        model_dir, train.objectives, tuple(len(part) for part in splits),
        max_prompt_tokens=max(len(sequence_ids(tokenizer, format_prompt(tokenizer, p), add_eos=False))
                              for p in responses),
        max_response_tokens=max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) + eos
                                for rs in responses.values() for r in rs),
        rows_per_prompt=float(np.mean([len(rs) for rs in responses.values()])),
        dropped_after_cut=splits.dropped)


def training_memory(found: SetupCheck, setup: DatasetSetup, config: TrainConfig):
    """The :class:`mopo_core.lm.checkpoints.MemoryEstimate` of one training step of ``config`` on
    the checked setup: the rows alive at once (MOPO: ``batch_size`` prompts times their mean
    distinct responses, online ``n_candidates`` each; DPO-style methods: two per pair; SFT:
    one), divided over ``gradient_accumulation_steps``; padded to the longest prompt plus the
    longest response (online: plus ``max_new_tokens``), of which only the response positions are
    scored (``response_len``); the fused log-prob's logits chunk; offline MOPO's KL leash
    (:func:`mopo_core.lm.config.leashed`): one sampled response per prompt scored in the same
    step, ``max_new_tokens + 1`` positions each, the padding long enough for them too;
    the reference copy every dataset run holds (it samples the evaluation's reference) and the
    trainer's frozen copies (:func:`mopo_core.lm.config.frozen_copies`)."""
    from mopo_core.lm.checkpoints import estimate_training_memory, read_config
    from mopo_core.lm.losses import FUSED_CHUNK_ELEMENTS

    if config.method == "mopo":
        rows = config.batch_size * (config.n_candidates if config.online else found.rows_per_prompt)
    else:
        rows = config.batch_size * (1 if config.method == "sft" else 2)
    response = config.max_new_tokens + 1 if config.online else found.max_response_tokens
    leash = config.batch_size if leashed(config) else 0
    sampled = config.max_new_tokens + 1
    vocab = read_config(found.model_dir).vocab_size
    return estimate_training_memory(
        found.model_dir, max(1, math.ceil(rows / config.gradient_accumulation_steps)),
        found.max_prompt_tokens + max(response, sampled if leash else 0), setup.dtype, lora_settings(setup),
        gradient_checkpointing=setup.gradient_checkpointing, reference_copies=1 + frozen_copies(config),
        logits_chunk=max(1, FUSED_CHUNK_ELEMENTS // vocab), response_len=response,
        leash_rows=math.ceil(leash / config.gradient_accumulation_steps), leash_response_len=sampled)


def lora_settings(setup: DatasetSetup) -> LoraSettings | None:
    """The LoRA adapters ``setup`` asks for (None: full fine-tuning)."""
    return None if setup.lora_r is None else LoraSettings(r=setup.lora_r)


def judge_summary(judge: PreferenceModel, path: str | Path, test: PreferenceDataset) -> dict:
    """For the run config: the preference model's folder, objectives, the accuracies it reported
    on its own held-out splits, and its accuracy on ``test`` (the run's evaluation pairs)."""
    own = judge.info.get("metrics", {})
    return {"path": str(Path(path).resolve()), "objectives": list(judge.objectives),
            "held_out_accuracy": {split: {o: m["accuracy"] for o, m in own[split].items()}
                                  for split in own if split != "train"},
            "eval_pairs_accuracy": {o: m["accuracy"] for o, m in judge.evaluate(test).items()},
            "n_eval_pairs": len(test)}


def preference_evaluation(scores: Callable[[list[str], list[str]], np.ndarray], prompts: list[str],
                          policy_samples: list[str], reference_samples: list[str],
                          objectives: tuple[str, ...]) -> Evaluation:
    """Win-rates of the policy's samples against the reference's under a Bradley-Terry judge.

    ``scores(prompts, responses) -> (N, K)`` rewards; samples are prompt-major, n per prompt
    for each model. ``P_k(a beats b) = sigmoid(s_k(a) - s_k(b))``; the win-rate, its
    prompt-level standard error and the mean scores are those of
    :func:`mopo_core.lm.evaluation.evaluate_policy`."""
    m, k = len(prompts), len(objectives)
    n = len(policy_samples) // max(m, 1)
    if m == 0 or n == 0 or len(policy_samples) != m * n or len(reference_samples) != m * n:
        raise ValueError(f"samples: expected n > 0 per prompt for each model and {m} prompts, got "
                         f"{len(policy_samples)} policy and {len(reference_samples)} reference samples")
    rows = [p for p in prompts for _ in range(n)]
    mine = np.asarray(scores(rows, policy_samples), dtype=np.float64).reshape(m, n, k)
    theirs = np.asarray(scores(rows, reference_samples), dtype=np.float64).reshape(m, n, k)
    per_prompt = expit(mine[:, :, None, :] - theirs[:, None, :, :]).mean(axis=(1, 2))  # (m, k)
    stderr = per_prompt.std(axis=0, ddof=1) / np.sqrt(m) if m > 1 else np.full(k, np.nan)
    samples = {p: {"policy": policy_samples[i * n:(i + 1) * n], "reference": reference_samples[i * n:(i + 1) * n]}
               for i, p in enumerate(prompts)}
    return Evaluation(tuple(objectives), per_prompt.mean(axis=0), stderr, mine.mean(axis=(0, 1)),
                      theirs.mean(axis=(0, 1)), samples)


# --------------------------------------------------------------------------- the task


class DatasetTask:
    """Everything the runs on one :class:`DatasetSetup` share, loaded once: the tokenizer, the
    reference (the starting checkpoint), the splits (``raw``: user prompts; ``train``,
    ``validation``, ``test``: chat-formatted), the judge, the reference's evaluation samples
    and the DPO experts of MODPO's margin (per budget)."""

    def __init__(self, setup: DatasetSetup, models_folder: str | Path | None = None):
        setup.validate()
        self.setup = setup
        self.model_dir = model_directory(setup.model, models_folder)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.raw = load_splits(setup, self.tokenizer)
        self.judge = load_judge(setup.prefmodel, self.raw[0].objectives, self.raw[2].prompts())
        self.train, self.validation, self.test = (chat_dataset(part, self.tokenizer) for part in self.raw)
        self._raw_prompt = {format_prompt(self.tokenizer, p): p for part in self.raw for p in part.prompts()}
        self._judge_columns = [self.judge.objectives.index(o) for o in self.objectives]
        self.reference = load_model(self.model_dir, dtype=setup.dtype, device=setup.device)
        self._experts: dict[tuple, list] = {}

    @property
    def objectives(self) -> tuple[str, ...]:
        return self.raw[0].objectives

    @cached_property
    def run_config(self) -> dict:
        """What every run of this task records besides its training config."""
        return {"task": "dataset", "dataset_setup": asdict(self.setup), "model_dir": str(self.model_dir),
                "lora": asdict(self.lora) if self.lora is not None else None,
                "prefmodel": judge_summary(self.judge, self.setup.prefmodel, self.raw[2]),
                "n_pairs_by_split": [len(part) for part in self.raw],
                "dropped_identical_after_cut": list(self.raw.dropped)}

    @property
    def lora(self) -> LoraSettings | None:
        return lora_settings(self.setup)

    def start_policy(self, seed: int = 0):
        """A trainable copy of the reference (LoRA-wrapped, adapters seeded by ``seed``, when set up)."""
        policy = copy.deepcopy(self.reference).train()
        if self.setup.gradient_checkpointing:
            enable_gradient_checkpointing(policy, lora=self.lora is not None)
        return policy if self.lora is None else apply_lora(policy, self.lora, seed=seed)

    def scores(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """``(N, K)`` judge scores in the data's objective order (``prompts`` raw or chat-formatted)."""
        raw = [self._raw_prompt.get(p, p) for p in prompts]
        return self.judge.scores_batch(raw, responses)[:, self._judge_columns]

    def oracle(self, prompt: str, a: str, b: str) -> np.ndarray:
        """The judge's ``(K,)`` P(a beats b) (a :data:`mopo_core.lm.trainer.Oracle`)."""
        score_a, score_b = self.scores([prompt, prompt], [a, b])
        return expit(score_a - score_b)

    def experts(self, config: TrainConfig, store: RunStore | None = None) -> list:
        """One DPO expert per secondary objective with ``config``'s budget (trained once per budget)."""
        key = (config.tau, config.steps, config.batch_size, config.lr, config.seed)
        if key not in self._experts:
            self._experts[key] = secondary_experts(config, self.start_policy(config.seed), self.tokenizer, self.train,
                                                   store, run_config=self.run_config)
        return self._experts[key]

    def fit(self, config: TrainConfig, store: RunStore | None = None, checkpoint_dir: str | Path | None = None,
            callbacks=(), on_trainer: Callable[[Trainer], None] | None = None, run_config: dict | None = None,
            resume_run_id: int | None = None):
        """Train ``config.method`` from the reference on the train split; returns (policy, TrainResult).
        ``run_config`` adds keys to the recorded config; ``on_trainer`` as in :func:`train_on_dataset`;
        ``resume_run_id``: continue that run from ``checkpoint_dir``'s checkpoint."""
        extras = {}
        if config.online:
            extras["oracle"] = self.oracle
        if config.method == "modpo":
            extras["secondary_rewards"] = implicit_rewards(self.experts(config, store), self.reference, self.tokenizer,
                                                           config.tau)
        policy = self.start_policy(config.seed)
        trainer = Trainer(policy, self.tokenizer, self.train, config, store=store, checkpoint_dir=checkpoint_dir,
                          callbacks=tuple(callbacks), run_config={**self.run_config, **(run_config or {})},
                          heldout=self.evaluate, **extras)
        if on_trainer is not None:
            on_trainer(trainer)
        return policy, train_watched(trainer, resume_run_id)  # a run that goes wrong is marked diverged

    @cached_property
    def reference_samples(self) -> list[str]:
        return self._samples(self.reference)

    def evaluate(self, policy) -> Evaluation:
        """The policy's win-rates against the reference on the test prompts (module docstring)."""
        return preference_evaluation(self.scores, self.raw[2].prompts(), self._samples(policy),
                                     self.reference_samples, self.objectives)

    def _samples(self, model) -> list[str]:
        s = self.setup
        return sample(model, self.tokenizer, self.test.prompts(), s.eval_samples, s.max_new_tokens, 1.0, s.eval_seed)

    def point_params(self, config: TrainConfig) -> dict:
        """The parameters a run's point carries."""
        return {**point_params(config), "lora_r": self.setup.lora_r}


def train_on_dataset(config: TrainConfig, setup: DatasetSetup, store: RunStore,
                     checkpoint_dir: str | Path | None = None, callbacks=(),
                     on_trainer: Callable[[Trainer], None] | None = None,
                     models_folder: str | Path | None = None, task: DatasetTask | None = None,
                     resume_run_id: int | None = None) -> tuple[TrainResult, Evaluation | None]:
    """Train ``config.method`` on ``setup``'s data, evaluate on the test prompts and record the
    evaluation as the run's point. ``on_trainer(trainer)`` is called before training (e.g. to
    hook ``trainer.request_cancel`` to a signal); a run that ends ``cancelled`` is not
    evaluated (``None``, no point); one that goes wrong is stopped and marked ``diverged``
    (:mod:`mopo_core.training.divergence`) and evaluated when its weights are finite. ``task``:
    a :class:`DatasetTask` of an earlier run, reused when its setup is ``setup`` (a queue of runs
    on one dataset loads it once). ``SetupError`` names a bad setup field. ``resume_run_id``:
    continue that stored run from the checkpoint in ``checkpoint_dir``; the trainer refuses a
    missing checkpoint, one that cannot be read with ``weights_only=True`` or one written with
    another config, naming the file."""
    checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir).expanduser().resolve()
    task = task if task is not None and task.setup == setup else DatasetTask(setup, models_folder)
    policy, result = task.fit(config, store, checkpoint_dir, callbacks, on_trainer, resume_run_id=resume_run_id)
    if result.status not in ("finished", DIVERGED) or (result.status == DIVERGED and not finite_weights(policy)):
        return result, None
    evaluation = task.evaluate(policy)
    store.add_points(result.run_id, [evaluation.as_point(config.method, task.point_params(config))])
    return result, evaluation


def evaluate_dataset_checkpoint(store: RunStore, run_id: int, config: TrainConfig, setup: DatasetSetup,
                                checkpoint_dir: str | Path, n_samples: int | None = None,
                                models_folder: str | Path | None = None) -> tuple[int, Evaluation]:
    """Evaluate the policy in the checkpoint of stored dataset run ``run_id`` (trained with
    ``config`` on ``setup``, finished or not) against the starting checkpoint on the run's test
    prompts, judged as the run is, with ``n_samples`` samples per prompt and model (default:
    the setup's ``eval_samples``). Only the test prompts: the judge may have been fitted or
    early-stopped on the others.

    Records an ``evaluate`` run (config: ``task: "dataset"``, the source run and its status,
    its step, split, samples, method) whose point is the evaluation; returns (that run's id, the evaluation).
    ``ValueError`` for a checkpoint that cannot be read or was written with another config;
    ``SetupError`` when the run's data, checkpoint or judge changed so that it no longer checks."""
    state = read_checkpoint(run_id, checkpoint_dir, config)
    if n_samples is not None:
        setup = replace(setup, eval_samples=int(n_samples))
    task = DatasetTask(setup, models_folder)
    policy = task.start_policy(config.seed)
    policy.load_state_dict(state["model"])
    policy.eval()
    with store.record("evaluate", {"task": "dataset", "source_run": run_id,
                                   "source_status": store.get_status(run_id), "step": int(state["step"]),
                                   "split": "test", "eval_samples": setup.eval_samples, "method": config.method,
                                   "objectives": list(task.objectives), "prefmodel": task.run_config["prefmodel"]},
                      name=f"evaluate run {run_id} at step {state['step']}") as eval_id:
        evaluation = task.evaluate(policy)
        store.add_points(eval_id, [evaluation.as_point(config.method, task.point_params(config))])
    return eval_id, evaluation
