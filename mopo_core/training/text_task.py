"""Training runs on the synthetic text task, end to end: data, reference model (SFT), training,
evaluation against the reference, all recorded in the run store. The text task of
:mod:`mopo_core.training.tasks` (``python -m mopo_core train``, the queue's ``train_text``
jobs); everything is built locally (no download).

A run's stored config holds everything needed to rebuild it: the :class:`TrainConfig` fields,
``task: "text"``, the :class:`TextTaskSetup` (under ``text_setup``, and flat for older readers)
and the absolute ``checkpoint_dir``. A resume (:func:`train_on_text_task` with
``resume_run_id``; the run's checks are :meth:`mopo_core.training.tasks.TrainingTask.resume`'s)
rebuilds the same task, tokenizer and reference (all seeded; the reference is fitted once per
settings and cached: :mod:`mopo_core.training.reference_cache`) and continues the run from
``checkpoint_dir/last.pt``; the metrics the store holds for steps after the checkpoint (logged
by a process that was killed before its next checkpoint) are dropped first, so the resumed
series equals an uninterrupted run's. A run that ends ``cancelled`` is not evaluated (no point
is added); it gets its point when a resume finishes it.

Checkpoints are read with ``torch.load(weights_only=True)`` only
(:func:`mopo_core.lm.trainer.read_checkpoint`): a ``last.pt`` that holds anything but tensors
and plain types is refused with its path, before any of it runs."""
from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from synthetic.text_task import TextTask, preference, score, vocabulary

from mopo_core.data.preferences import PreferenceDataset
from mopo_core.lm.config import TrainConfig
from mopo_core.lm.evaluation import Evaluation, evaluate_policy
from mopo_core.lm.models import word_tokenizer
from mopo_core.lm.trainer import Trainer, TrainResult, implicit_rewards, read_checkpoint
from mopo_core.runs import RunStore
from mopo_core.training.common import point_params, secondary_experts
from mopo_core.training.divergence import DIVERGED, finite_weights, train_watched
from mopo_core.training.reference_cache import Progress, fitted_reference
from mopo_core.validation import check_int


@dataclass
class TextTaskSetup:
    """Task size, the labelled pairs and the reference model's SFT budget: ``pairs_per_prompt``
    pairs per prompt, or with ``train_pairs`` exactly that many training pairs (see
    :func:`build_text_task`); ``soft_labels``: each label is the oracle's probability rather
    than a Bernoulli draw from it."""

    #: The task that trains on this setup (:func:`mopo_core.training.tasks.task_for_setup`).
    task: ClassVar[str] = "text"

    n_prompts: int = 40
    n_candidates: int = 8
    pairs_per_prompt: int = 8
    temperature: float = 0.1
    sft_steps: int = 300
    eval_samples: int = 8
    seed: int = 0
    train_pairs: int | None = None
    soft_labels: bool = False


def text_task(setup: TextTaskSetup) -> TextTask:
    """The task ``setup`` describes (its constructor refuses bad fields, naming them, as does
    this function for ``train_pairs``)."""
    if setup.train_pairs is not None:
        check_int(setup.train_pairs, "train_pairs", 1)
    return TextTask(n_prompts=setup.n_prompts, n_candidates=setup.n_candidates, temperature=setup.temperature,
                    seed=setup.seed)


def check_text_run(config: TrainConfig, setup: TextTaskSetup) -> None:
    """``ValueError`` naming the field for a bad ``setup``, or a ``config`` that does not fit the
    task's objectives; cheap (no model is built)."""
    config.validate(len(text_task(setup).objectives))


def build_text_task(setup: TextTaskSetup, progress: Progress | None = None,
                    cache_folder: str | os.PathLike | None = None):
    """(task, tokenizer, reference model, train/validation/test datasets) for ``setup``.

    ``pairs_per_prompt`` pairs of distinct candidates per prompt are split by prompt (80/10/10,
    seeded). With ``train_pairs`` the training split's pairs are redrawn on its prompts: exactly
    ``train_pairs`` pairs, taken round robin over the prompts (each gets ``train_pairs //
    prompts`` or one more); validation and test are the same as without it.

    The reference (SFT of a tiny GPT-2 on the task's corpus, ``sft_steps`` steps, seeded) is
    fitted once per settings and then read from the cache
    (:func:`mopo_core.training.reference_cache.fitted_reference`, in ``cache_folder``, default
    the models folder's ``cache``), bit-identical to a fresh fit; ``progress(fraction, text)``
    follows the fit (default: lines on stderr)."""
    task = text_task(setup)
    train, validation, test = PreferenceDataset.from_records(
        _distinct_pairs(task, setup.pairs_per_prompt, setup), origin="text task").split(seed=setup.seed)
    if setup.train_pairs is not None:
        train = _exact_training_pairs(task, train.prompts(), setup)
    tokenizer = word_tokenizer(vocabulary())
    reference = fitted_reference(tokenizer, task.corpus(), setup.seed, setup.sft_steps, progress, cache_folder)
    return task, tokenizer, reference, (train, validation, test)


def _distinct_pairs(task: TextTask, per_prompt: int, setup: TextTaskSetup) -> list[dict]:
    """``per_prompt`` labelled pairs per prompt, less those of two identical candidates (which carry
    no preference)."""
    return [r for r in task.sample_pairs(per_prompt, seed=setup.seed, soft=setup.soft_labels)
            if r["response_a"] != r["response_b"]]


def _exact_training_pairs(task: TextTask, prompts: list[str], setup: TextTaskSetup) -> PreferenceDataset:
    """Exactly ``setup.train_pairs`` pairs on ``prompts``, round robin over them (twice the needed
    draws per prompt, so that dropping identical candidates leaves enough)."""
    by_prompt: dict[str, list[dict]] = {p: [] for p in prompts}
    for record in _distinct_pairs(task, 2 * -(-setup.train_pairs // len(prompts)), setup):
        if record["prompt"] in by_prompt:
            by_prompt[record["prompt"]].append(record)
    rounds = max(len(pairs) for pairs in by_prompt.values())
    records = [pairs[i] for i in range(rounds) for pairs in by_prompt.values() if i < len(pairs)]
    if len(records) < setup.train_pairs:
        raise ValueError(f"train_pairs: the training prompts give only {len(records)} distinct pairs, "
                         f"asked for {setup.train_pairs}")
    return PreferenceDataset.from_records(records[:setup.train_pairs], origin="text task")


def task_oracle(task: TextTask):
    """The task's exact preference oracle: ``(prompt, a, b) -> (K,)`` P(a beats b) per objective."""

    def oracle(prompt, a, b):
        return np.array([preference(prompt, a, b, k, task.temperature) for k in task.objectives])

    return oracle


def evaluate_on_task(task: TextTask, policy, reference, tokenizer, prompts: list[str], setup: TextTaskSetup,
                     n_samples: int | None = None) -> Evaluation:
    """Win-rates of ``policy`` against ``reference`` under the task's oracles, on ``prompts``
    (``n_samples`` per prompt and model; default ``setup.eval_samples``)."""
    objectives = task.objectives

    def scorer(prompt, response):
        return score(prompt, response, objectives)

    return evaluate_policy(policy, reference, tokenizer, prompts, task_oracle(task), scorer, objectives,
                           n_samples=n_samples or setup.eval_samples, seed=setup.seed)


def train_on_text_task(config: TrainConfig, setup: TextTaskSetup, store: RunStore,
                       checkpoint_dir: str | Path | None = None, callbacks=(),
                       on_trainer: Callable[[Trainer], None] | None = None,
                       resume_run_id: int | None = None, built=None) -> tuple[TrainResult, Evaluation | None]:
    """SFT a reference, train ``config.method`` from it, evaluate on the held-out prompts and
    record the evaluation as the run's point (values: win-rates against the reference).

    ``on_trainer(trainer)`` is called once the trainer is built, before training (e.g. to
    hook ``trainer.request_cancel`` to a signal). A run that ends ``cancelled`` is not
    evaluated: the evaluation is ``None`` and no point is added. A run that goes wrong (loss,
    gradient norm or KL: :mod:`mopo_core.training.divergence`) stops there and is marked
    ``diverged`` (result status ``"diverged"``); its policy is still evaluated and gets its point
    when its weights are finite (the Compare page keeps it off fronts unless asked). A bad config is refused before
    the reference is trained. ``resume_run_id``: continue that stored run from the checkpoint
    in ``checkpoint_dir``, which is read (and refused, naming the file, when it cannot be read
    with ``weights_only=True`` or was written with another config) before the reference is trained.
    ``built``: :func:`build_text_task`'s answer for ``setup`` when the caller has it (the job
    worker's :meth:`~mopo_core.training.tasks.TextTraining.prepare`), used instead of a second build."""
    check_text_run(config, setup)
    checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir).expanduser().resolve()
    if resume_run_id is not None:
        read_checkpoint(resume_run_id, checkpoint_dir, config)
    return _train_and_evaluate(config, setup, store, checkpoint_dir, callbacks, on_trainer, resume_run_id, built)


def evaluate_text_checkpoint(store: RunStore, run_id: int, config: TrainConfig, setup: TextTaskSetup,
                             checkpoint_dir: str | Path, n_samples: int | None = None,
                             split: str = "test") -> tuple[int, Evaluation]:
    """Evaluate the policy in the checkpoint of stored text-task run ``run_id`` (trained with
    ``config`` on ``setup``, finished or not) against the rebuilt reference on the ``split``
    ("test" or "validation") prompts, with ``n_samples`` samples per prompt and model (default:
    the setup's ``eval_samples``).

    Records an ``evaluate`` run (config: the source run and its status, e.g. ``diverged``, its
    step, split, samples) whose point
    is the evaluation; returns (that run's id, the evaluation). ``ValueError`` for a bad split
    and a checkpoint that cannot be read or was written with another config (naming the file)."""
    splits = ("train", "validation", "test")
    if split not in splits[1:]:
        raise ValueError(f"split: expected 'test' or 'validation', got {split!r}")
    state = read_checkpoint(run_id, Path(checkpoint_dir), config)
    task, tokenizer, reference, datasets = build_text_task(setup)
    policy = copy.deepcopy(reference)
    policy.load_state_dict(state["model"])
    samples = n_samples or setup.eval_samples
    with store.record("evaluate", {"source_run": run_id, "source_status": store.get_status(run_id),
                                   "step": int(state["step"]), "split": split, "eval_samples": samples,
                                   "method": config.method},
                      name=f"evaluate run {run_id} at step {state['step']}") as eval_id:
        evaluation = evaluate_on_task(task, policy, reference, tokenizer, datasets[splits.index(split)].prompts(),
                                      setup, n_samples=samples)
        store.add_points(eval_id, [evaluation.as_point(config.method, point_params(config))])
    return eval_id, evaluation


def _train_and_evaluate(config: TrainConfig, setup: TextTaskSetup, store: RunStore, checkpoint_dir: Path | None,
                        callbacks, on_trainer, resume_run_id: int | None = None, built=None):
    task, tokenizer, reference, (train, _, test) = built or build_text_task(setup)
    policy = copy.deepcopy(reference)
    run_config = {"task": "text", **{k: v for k, v in asdict(setup).items() if k not in asdict(config)},
                  "text_setup": asdict(setup)}  # the train config's own seed stays the stored "seed"
    extras = {}
    if config.online:
        extras["oracle"] = task_oracle(task)
    if config.method == "modpo":
        extras["secondary_rewards"] = implicit_rewards(secondary_experts(config, reference, tokenizer, train),
                                                       reference, tokenizer, config.tau)
    trainer = Trainer(policy, tokenizer, train, config, store=store, checkpoint_dir=checkpoint_dir,
                      callbacks=tuple(callbacks), run_config=run_config,
                      heldout=lambda model: evaluate_on_task(task, model, reference, tokenizer, test.prompts(), setup),
                      **extras)
    if on_trainer is not None:
        on_trainer(trainer)
    result = train_watched(trainer, resume_run_id)  # a run that goes wrong stops and is marked diverged
    if result.status not in ("finished", DIVERGED) or not trainer.is_main:  # under torchrun process 0 evaluates
        return result, None
    if result.status == DIVERGED and not finite_weights(policy):  # nothing to sample from
        return result, None
    evaluation = evaluate_on_task(task, policy, reference, tokenizer, test.prompts(), setup)
    store.add_points(result.run_id, [evaluation.as_point(config.method, point_params(config))])
    return result, evaluation
