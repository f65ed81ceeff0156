"""The engine side of the app's Models page: load one registry entry (the built-in tiny model or a
checkpoint folder) with its tokenizer, unload it and say what memory came back, check prompts
against a word-level vocabulary, and score sampled responses per objective. No Streamlit: the
page (``app/views/models.py``) keeps the loaded model in its session state, draws the progress
bar, the memory log and the tables, and caches the preference model it passes in.

Conventions:

- memory is measured with :func:`mopo_core.lm.memory.memory_use` (process RSS in bytes,
  ``None`` without ``/proc``; CUDA memory allocated / reserved by torch, 0 without CUDA);
- one model at a time: :func:`unload_model` empties the model's tensors in place
  (:func:`mopo_core.lm.memory.unload`), so a stale reference elsewhere keeps no memory alive;
- the built-in model is fitted once per models folder (the reference cache) and read once per
  process (:func:`builtin_weights`, a few hundred KiB kept for the process's lifetime) so that
  loading it again only copies its weights;
- scores: a ``(n_responses, n_objectives)`` DataFrame, one row per response in the given order,
  one column per objective, higher is better.
"""
from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from mopo_core.lm.memory import MemoryUse, memory_use, unload
from mopo_core.lm.registry import ModelEntry, inside_models_folder
from mopo_core.lm.devices import resolve_device, sampling_dtype
from mopo_core.lm.models import load_model, load_tokenizer, tiny_gpt

#: ``progress(fraction, text)``: fraction in [0, 1], a sentence saying what is being done.
Progress = Callable[[float, str], None]
#: Appended to the text-task scorers' note when a prompt names no topic word.
UNDEFINED_HELPFULNESS = (" Helpfulness is undefined here: the prompt names none of the task's topic words (e.g. "
                         "garlic, passport, budget, compost), so it is left empty.")


@dataclass
class LoadedModel:
    """A loaded model and how loading it went.

    ``kind``: the entry's (``"builtin"`` or ``"checkpoint"``). ``device`` / ``dtype``: of its
    first parameter, as text (``"cpu"``, ``"float32"``). ``seconds``: wall time of the load.
    ``before`` / ``after``: the process's memory around it. ``parameters``: parameter count
    (tied weights once). ``prompts``: held-out prompts the model knows (the built-in model's
    text-task test prompts; empty for a checkpoint).
    """

    name: str
    kind: str
    model: torch.nn.Module
    tokenizer: object
    device: str
    dtype: str
    seconds: float
    before: MemoryUse
    after: MemoryUse
    parameters: int
    prompts: list[str]

    def as_dict(self) -> dict:
        """The fields as a plain dict (shallow: the same model and tokenizer objects, no copies)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Unloaded:
    """What unloading a model freed. ``before`` / ``after``: the process's memory around the
    unload; ``cuda_*_freed``: CUDA bytes freed by emptying the model's tensors; ``loaded_rss``:
    the RSS right after the model was loaded (``None`` if unknown)."""

    name: str
    before: MemoryUse
    after: MemoryUse
    cuda_allocated_freed: int
    cuda_reserved_freed: int
    loaded_rss: int | None = None

    @property
    def rss_before(self) -> int | None:
        return self.before.rss

    @property
    def rss_after(self) -> int | None:
        return self.after.rss

    @property
    def rss_freed(self) -> int | None:
        """RSS before minus after (bytes; negative if it grew), ``None`` where unmeasured."""
        return None if self.before.rss is None or self.after.rss is None else self.before.rss - self.after.rss


# ----------------------------------------------------------------------------- load / unload


#: The built-in model's (weights, tokenizer, prompts), once :func:`builtin_weights` has built them.
_builtin: list[tuple[dict[str, torch.Tensor], object, list[str]]] = []


def builtin_weights(progress: Progress | None = None) -> tuple[dict[str, torch.Tensor], object, list[str]]:
    """The built-in model fitted on the text task (``build_text_task(TextTaskSetup())``, seeded),
    once per process: (its state dict, cloned and detached; its word-level tokenizer; the test
    split's prompts). Callers copy the weights into a fresh model, never modify them. The fit
    itself happens once per models folder: later processes read it from the reference cache
    (:mod:`mopo_core.training.reference_cache`); ``progress(fraction, text)`` follows it."""
    if not _builtin:
        from mopo_core.training.text_task import TextTaskSetup, build_text_task

        _, tokenizer, reference, (_, _, test) = build_text_task(TextTaskSetup(), progress or _no_progress)
        _builtin.append(({k: v.detach().clone() for k, v in reference.state_dict().items()}, tokenizer,
                         test.prompts()))
    return _builtin[0]


def _no_progress(fraction: float, text: str) -> None:
    pass


def load_entry(entry: ModelEntry, dtype: str = "auto", device: str = "auto",
               progress: Progress | None = None, folder: str | os.PathLike | None = None) -> LoadedModel:
    """Load ``entry`` and its tokenizer, in eval mode, measuring memory and time.

    ``dtype``: ``"auto"`` (bf16 on a GPU; on the CPU bf16 for a large model, else fp32: the rule
    of :func:`mopo_core.lm.devices.sampling_dtype` on the entry's parameter count), ``"fp32"``,
    ``"bf16"`` or ``"fp16"``;
    ``device``: ``"auto"``, ``"cpu"`` or ``"cuda"``. ``progress(fraction, text)`` is called with
    increasing fractions, the last 1.0. The built-in model is built from :func:`builtin_weights`
    (the first fit in a models folder takes seconds to a minute on a busy CPU, reported step by
    step; later starts read it from the cache in well under a second); a checkpoint folder is read by
    :func:`mopo_core.lm.models.load_model`. ``folder``: the models folder the entry was listed from
    (default: :func:`mopo_core.lm.registry.models_dir`'s). A checkpoint entry with a
    ``problem``, one that :func:`mopo_core.lm.registry.inside_models_folder` refuses now (a
    link to outside the models folder), or one without a usable tokenizer raises ``ValueError``
    naming its path; the last after the half-loaded model is unloaded.
    """
    progress = progress or _no_progress
    before = memory_use()
    start = time.perf_counter()
    target = resolve_device(device)
    torch_dtype = sampling_dtype(dtype, target, entry.n_parameters)
    if entry.kind == "builtin":
        progress(0.1, "Building the text task and its fitted reference (fitted once, then read from the models "
                      "folder's cache)…")
        weights, tokenizer, prompts = builtin_weights(lambda f, text: progress(0.15 + 0.5 * f, text))
        progress(0.7, "Building the model from its fitted weights…")
        model = tiny_gpt(len(tokenizer))
        model.load_state_dict(weights)
        model = model.to(device=target, dtype=torch_dtype).eval()
        prompts = list(prompts)
    else:
        if entry.problem is not None:
            raise ValueError(f"{entry.path}: cannot be loaded: {entry.problem}")
        progress(0.1, f"Checking {entry.name}'s config and that its weights fit in the available memory…")
        inside_models_folder(entry.path, folder)
        progress(0.3, f"Reading {entry.name}'s weights ({entry.dtype}) onto {target}…")
        model = load_model(entry.path, dtype=torch_dtype, device=target)
        progress(0.85, "Loading the tokenizer…")
        try:
            tokenizer = load_tokenizer(entry.path)
        except (OSError, ValueError) as exc:
            unload(model)
            raise ValueError(f"{entry.path}: no usable tokenizer in the checkpoint folder ({exc})") from None
        prompts = []
    progress(1.0, "Loaded.")
    seconds = time.perf_counter() - start
    gc.collect()
    after = memory_use()
    param = next(model.parameters())
    return LoadedModel(entry.name, entry.kind, model, tokenizer, str(param.device),
                       str(param.dtype).removeprefix("torch."), seconds, before, after,
                       sum(p.numel() for p in model.parameters()), prompts)


def unload_model(model: torch.nn.Module, name: str, loaded_rss: int | None = None,
                 release: Callable[[], None] | None = None) -> Unloaded:
    """Unload ``model`` (named ``name``): empty its tensors in place, call ``release()`` (the
    caller drops its other references: the tokenizer, caches of companion models), collect
    garbage and give CUDA's cached blocks back; return what was freed. ``loaded_rss``: the
    RSS right after it was loaded, passed through. The model is unusable afterwards."""
    before = memory_use()
    freed = unload(model)
    if release is not None:
        release()
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    after = memory_use()
    return Unloaded(name, before, after, freed.cuda_allocated, freed.cuda_reserved, loaded_rss)


# ----------------------------------------------------------------------------- tokenizer checks


def word_level(tokenizer) -> bool:
    """Whether ``tokenizer`` is a fast tokenizer with a word-level model (one token per known word)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.model).__name__ == "WordLevel"


def unknown_words(tokenizer, text: str) -> list[str]:
    """Words of ``text`` (split on whitespace, first occurrence order, no repeats) that a
    word-level tokenizer maps to its unknown token; ``[]`` for any other tokenizer."""
    if not word_level(tokenizer):
        return []
    unk = tokenizer.unk_token_id
    return [w for w in dict.fromkeys(text.split()) if tokenizer.convert_tokens_to_ids(w) == unk]


# ----------------------------------------------------------------------------- scoring


def score_samples(prompt: str, responses: list[str], preference_model=None,
                  name: str = "") -> tuple[pd.DataFrame, str]:
    """Per-objective scores of ``responses`` to ``prompt`` and a sentence saying what they are.

    Without ``preference_model``: the text task's programmatic scorers
    (:func:`synthetic.text_task.score`, each in [0, 1]); columns
    :data:`synthetic.text_task.OBJECTIVES`. Helpfulness is NaN, and the note says why, when the
    prompt names no topic word. With ``preference_model`` (a
    :class:`mopo_core.lm.judge.PreferenceModel`, named ``name`` in the note): its
    centred Bradley-Terry rewards, one column per objective of the model.
    Returns a ``(len(responses), n_objectives)`` DataFrame and the note.
    """
    if preference_model is None:
        from synthetic.text_task import OBJECTIVES, score

        rows, note = [], ""
        for r in responses:
            try:
                rows.append(score(prompt, r, OBJECTIVES))
            except ValueError:  # the prompt names no topic word: helpfulness is undefined
                rows.append([np.nan, *score("any tips on sauce ?", r, OBJECTIVES[1:])])
                note = UNDEFINED_HELPFULNESS
        return (pd.DataFrame(rows, columns=list(OBJECTIVES)),
                "Text-task scorers, each in [0, 1], higher is better: helpfulness = share of the prompt's topic "
                "words the response contains, harmlessness = exp(−risky words), brevity = 1 − words/12." + note)
    values = preference_model.scores_batch([prompt] * len(responses), responses)
    accuracy = preference_model.info.get("metrics", {}).get("test", {})
    acc = ", ".join(f"{o} {m['accuracy']:.0%}" for o, m in accuracy.items() if "accuracy" in m)
    return (pd.DataFrame(values, columns=list(preference_model.objectives)),
            f"Preference model {name}: Bradley-Terry rewards minus the mean training reward (0 = as good as an "
            f"average training response; higher is better)" + (f"; its held-out pair accuracy: {acc}." if acc else "."))


# ----------------------------------------------------------------------------- policies of finished runs


#: Statuses of a train run whose checkpoint is a policy worth sampling (it will not change any more).
TRAINED_STATUSES = ("finished", "cancelled", "diverged")


@dataclass(frozen=True)
class TrainedRun:
    """A stored train run offered on the Models page: its id, name, task (``"text"`` or
    ``"dataset"``), method, last logged step (``None`` before the first), status and the path of
    its checkpoint file (which exists; whether it reads is only known once loaded)."""

    run_id: int
    name: str
    task: str
    method: str
    step: int | None
    status: str
    checkpoint: str

    @property
    def label(self) -> str:
        step = "no step logged" if self.step is None else f"step {self.step}"
        named = "" if self.name == f"run {self.run_id}" else f" · {self.name}"
        return f"run {self.run_id} · {self.method} · {self.task} task · {step} · {self.status}{named}"


@dataclass
class TrainedPolicy:
    """A run's policy loaded from its checkpoint beside the reference it was trained against.

    ``policy``, ``reference``, ``tokenizer``: the models (eval mode; a text-task run's on the
    CPU, a dataset run's on its setup's device) and their tokenizer. ``run``: the :class:`TrainedRun`; ``step``: the checkpoint's step. ``prompts``:
    the run's held-out test prompts (raw user text). ``chat``: prompts are sent as one user turn
    of the tokenizer's chat template (dataset runs, as they were trained). ``objectives``: the
    score columns of :meth:`score`. ``judge``: how :meth:`score` scores (the text task's scorers,
    or the dataset run's preference model through its ``DatasetTask``).
    ``before`` / ``after``: the process's memory around the load; ``seconds``: its wall time.
    """

    policy: torch.nn.Module
    reference: torch.nn.Module
    tokenizer: object
    run: TrainedRun
    step: int
    prompts: list[str]
    chat: bool
    objectives: tuple[str, ...]
    judge: object
    before: MemoryUse
    after: MemoryUse
    seconds: float

    def score(self, prompt: str, responses: list[str]) -> tuple[pd.DataFrame, str]:
        """Per-objective scores of ``responses`` to ``prompt`` and a note, as :func:`score_samples`."""
        if self.judge is None:
            return score_samples(prompt, responses)
        values = self.judge.scores([prompt] * len(responses), responses)
        return (pd.DataFrame(values, columns=list(self.objectives)),
                f"The run's preference model ({self.run.task} task's judge), one reward per objective; higher is "
                "better.")


def trained_policies(store) -> list[TrainedRun]:
    """The ``train`` runs of ``store`` (a :class:`mopo_core.runs.RunStore`) that ended
    (:data:`TRAINED_STATUSES`), of a known task, whose config names a checkpoint folder holding
    a checkpoint file; oldest first. One query for their configs and steps; no checkpoint is read."""
    from mopo_core.lm.config import CHECKPOINT_NAME
    from mopo_core.training.tasks import TASKS

    runs = store.list_runs(kind="train")
    runs = runs[runs["status"].isin(TRAINED_STATUSES)]
    progress = store.progress([int(i) for i in runs["id"]])
    found = []
    for row in runs.itertuples():
        info = progress.get(int(row.id))
        config = (info or {}).get("config") or {}
        folder = config.get("checkpoint_dir")
        if info is None or config.get("task") not in TASKS or not folder:
            continue
        path = Path(folder) / CHECKPOINT_NAME
        if not path.is_file():
            continue
        step = info.get("step")
        found.append(TrainedRun(int(row.id), row.name or f"run {row.id}", config["task"], str(config.get("method", "?")),
                                None if step is None else int(step), str(row.status), str(path)))
    return found


def load_trained_policy(store, run_id: int, progress: Progress | None = None) -> TrainedPolicy:
    """Run ``run_id``'s policy from its checkpoint and its reference, in eval mode (a text-task
    run's on the CPU, a dataset run's on its setup's device and dtype).

    The checkpoint is read only by :func:`mopo_core.lm.trainer.read_checkpoint` (``torch.load``
    with ``weights_only=True``; it checks the file's fields and config). A text-task run
    rebuilds its reference with :func:`mopo_core.training.text_task.build_text_task` (read from
    the reference cache) and loads the weights into a copy, as
    :func:`~mopo_core.training.text_task.evaluate_text_checkpoint` does; a dataset run loads its
    starting checkpoint (and LoRA adapters) through
    :class:`mopo_core.training.dataset_task.DatasetTask`, as
    :func:`~mopo_core.training.dataset_task.evaluate_dataset_checkpoint` does.
    ``ValueError`` naming the run (and the file) for a run that is not an ended train run with a
    checkpoint folder, a checkpoint that cannot be read, or a dataset run whose setup no longer checks."""
    from mopo_core.lm.config import CHECKPOINT_NAME
    from mopo_core.lm.trainer import read_checkpoint
    from mopo_core.training.tasks import task_of_run, train_config_from
    from synthetic.text_task import OBJECTIVES

    progress = progress or _no_progress
    offered = {r.run_id: r for r in trained_policies(store)}
    task = task_of_run(store, run_id, "loaded on the Models page")
    run = task.stored_run(store, run_id, "loaded on the Models page")
    if run.status not in TRAINED_STATUSES:
        raise ValueError(f"run {run_id}: status {run.status!r}; only runs that are {', '.join(TRAINED_STATUSES)} "
                         "can be loaded here")
    before = memory_use()
    start = time.perf_counter()
    config = train_config_from(run.config)
    progress(0.05, f"Reading run {run_id}'s checkpoint…")
    path = Path(run.config["checkpoint_dir"]) / CHECKPOINT_NAME
    state = read_checkpoint(run_id, run.config["checkpoint_dir"], config)
    setup = task.run_setup(run.config)
    if task.name == "text":
        import copy

        from mopo_core.training.text_task import build_text_task

        progress(0.2, "Rebuilding the text task and its reference (read from the reference cache)…")
        _, tokenizer, reference, (_, _, test) = build_text_task(setup, lambda f, text: progress(0.2 + 0.6 * f, text))
        policy = copy.deepcopy(reference)
        judge, prompts, chat, objectives = None, test.prompts(), False, tuple(OBJECTIVES)
    else:
        from mopo_core.training.dataset_task import DatasetTask, SetupError

        progress(0.2, f"Loading {setup.model}, its data and judge (the run's setup)…")
        try:
            judge = DatasetTask(setup)
        except SetupError as exc:
            raise ValueError(f"run {run_id}: its setup no longer checks: {exc}") from None
        tokenizer, reference = judge.tokenizer, judge.reference
        policy = judge.start_policy(config.seed)
        prompts, chat, objectives = judge.raw[2].prompts(), True, tuple(judge.objectives)
    progress(0.85, "Loading the checkpoint's weights into the policy…")
    try:
        policy.load_state_dict(state["model"])
    except RuntimeError as exc:
        unload(policy)
        raise ValueError(f"run {run_id}: the checkpoint {path} does not fit the run's model: "
                         f"{' '.join(str(exc).split())[:300]}") from None
    policy.eval()
    reference.eval()
    progress(1.0, "Loaded.")
    seconds = time.perf_counter() - start
    gc.collect()
    info = offered.get(run_id) or TrainedRun(run_id, run.name or f"run {run_id}", task.name,
                                             str(run.config.get("method", "?")), None, run.status,
                                             str(path))
    return TrainedPolicy(policy, reference, tokenizer, info, int(state["step"]), list(prompts), chat, objectives,
                         judge, before, memory_use(), seconds)


def sample_both(trained: TrainedPolicy, prompt: str, n: int, max_new_tokens: int, temperature: float,
                seed: int) -> dict[str, list[str]]:
    """``n`` responses to ``prompt`` from the policy and from the reference, same seed and
    temperature (so with the same weights they would be the same responses):
    ``{"policy": [...], "reference": [...]}``."""
    from mopo_core.lm.models import sample
    from mopo_core.lm.registry import format_prompt

    text = format_prompt(trained.tokenizer, prompt) if trained.chat else prompt
    return {name: sample(model, trained.tokenizer, [text], n=int(n), max_new_tokens=int(max_new_tokens),
                         temperature=float(temperature), seed=int(seed))
            for name, model in (("policy", trained.policy), ("reference", trained.reference))}


def unload_trained(trained: TrainedPolicy) -> Unloaded:
    """Unload both models of ``trained`` (:func:`unload_model` of the policy, the reference's
    tensors emptied too); what was freed."""
    name = f"run {trained.run.run_id} policy + reference"
    return unload_model(trained.policy, name, trained.after.rss, lambda: unload(trained.reference))
