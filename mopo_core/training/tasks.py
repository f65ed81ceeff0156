"""The kinds of training run behind one interface, and the one place that chooses between them.

A training run is a ``train`` run in the run store whose config names its task (``task``):

- ``"text"``: the synthetic text task with a tiny word-level GPT, everything built locally
  (:mod:`mopo_core.training.text_task`; its setup a :class:`~mopo_core.training.text_task.TextTaskSetup`);
- ``"dataset"``: a local Hugging Face checkpoint trained on a preference file and judged by a
  trained preference model (:mod:`mopo_core.training.dataset_task`; its setup a
  :class:`~mopo_core.training.dataset_task.DatasetSetup`).

Each is a :class:`TrainingTask`: it checks a config against a setup, trains a run, resumes a
stored run from its checkpoint, evaluates a stored run's checkpoint, reads its setup back from
a queued job or a stored run, and says what its points' values depend on. Whoever must tell
the two apart (the ``train`` and ``evaluate`` commands, the job queue and its worker, the Train
page) asks this module: :func:`task_of` (a stored run), :func:`task_of_run` (a run id, refusing
any other run with the reason), :func:`task_for_setup` (a setup) or :func:`task_named` (a run
config's ``task`` or a job kind's task). A new kind of run is a :class:`TrainingTask` added to
:data:`TASKS`.

Resuming and evaluating share their checks here: the run exists, is a train run of a known
task and was started with a checkpoint folder; a resumed run has a status of
:data:`RESUMABLE_STATUSES` (``running``: its process died without updating it) and no live
process training it (:func:`mopo_core.runs.check_run_owner`, naming that process). A refused
run is left as it was. The stored config keeps the :class:`TrainConfig` fields at its top level
(:func:`train_config_from` reads them back).

This module imports no torch, so the queue and the Train page's presenter name and choose
tasks without loading it; a task's training and evaluation import its module (and torch) when
they run.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import ClassVar

from mopo_core.lm.config import TrainConfig
from mopo_core.runs import Run, RunStore, check_run_owner

#: Statuses a run can be resumed from (``running``: its process died without updating it).
RESUMABLE_STATUSES = ("running", "cancelled", "interrupted", "failed")


def train_config_from(cfg: dict) -> TrainConfig:
    """The :class:`TrainConfig` of a stored train run's config or a queued job's (lists back to tuples)."""
    values = {f.name: cfg[f.name] for f in fields(TrainConfig) if f.name in cfg}
    if "thresholds" in values:
        values["thresholds"] = tuple(float(b) for b in values["thresholds"])
    return TrainConfig(**values)


class TrainingTask(ABC):
    """One kind of training run (see the module doc). ``train`` and ``resume`` return
    ``(TrainResult, Evaluation | None)`` (``None``: the run ended cancelled, no point added);
    ``evaluate`` returns ``(id of the recorded evaluate run, Evaluation)``. Hooks:
    ``callbacks`` are called by the trainer after each step, ``on_trainer(trainer)`` once the
    trainer is built, before training (e.g. to hook ``trainer.request_cancel`` to a signal).
    ``loaded``: what an earlier run on the same setup loaded (:meth:`load`), reused."""

    #: The run config's ``task``.
    name: ClassVar[str]

    @property
    def job_kind(self) -> str:
        """The job queue's kind for a new run of this task."""
        return f"train_{self.name}"

    # ------------------------------------------------------------------ setups (no torch)

    @abstractmethod
    def setup_from(self, stored: dict):
        """The setup whose fields ``stored`` holds (a queued job's spec)."""

    @abstractmethod
    def run_setup(self, run_config: dict):
        """The setup a stored run of this task was trained on."""

    @abstractmethod
    def measurement(self, run_config: dict) -> tuple:
        """What a stored run's point values depend on besides the objectives (JSON values):
        runs whose points may share a plane have the same."""

    # ------------------------------------------------------------------ work (imports torch)

    @abstractmethod
    def check(self, config: TrainConfig, setup, models_folder: str | Path | None = None) -> None:
        """``ValueError`` naming the field for a bad ``setup`` or a ``config`` that does not fit
        it; cheap (no weights are loaded). What the queue calls before accepting a run."""

    @abstractmethod
    def train(self, config: TrainConfig, setup, store: RunStore, checkpoint_dir: str | Path | None = None,
              callbacks=(), on_trainer: Callable | None = None, loaded=None):
        """Train ``config.method`` on ``setup``, evaluate it on the held-out prompts and record
        the evaluation as the run's point (a bad config is refused before anything is built)."""

    def resume(self, store: RunStore, run_id: int, callbacks=(), on_trainer: Callable | None = None, loaded=None):
        """Continue stored run ``run_id`` from its checkpoint to its configured steps, then
        evaluate and add its point as :meth:`train` does; config and setup come from the run.
        ``ValueError`` for a run that cannot be resumed (module doc) or a checkpoint that cannot
        be read with ``weights_only=True`` or was written with another config (naming the file)."""
        run = self.stored_run(store, run_id, "resumed")
        if run.status not in RESUMABLE_STATUSES:
            state = "already finished" if run.status == "finished" else f"status {run.status!r}"
            raise ValueError(f"run {run_id}: {state}; only runs that are {', '.join(RESUMABLE_STATUSES)} can be "
                             "resumed")
        check_run_owner(store.path, run_id)
        return self._continue(run, store, callbacks, on_trainer, loaded)

    def evaluate(self, store: RunStore, run_id: int, n_samples: int | None = None, split: str = "test"):
        """Evaluate the policy in the checkpoint of stored run ``run_id`` (finished or not)
        against the reference on the ``split`` prompts, ``n_samples`` samples per prompt and
        model (default: the run's); records an ``evaluate`` run whose point is the evaluation.
        ``ValueError`` for a run that cannot be evaluated (module doc) or an unreadable checkpoint."""
        return self._evaluate(self.stored_run(store, run_id, "evaluated"), store, n_samples, split)

    @abstractmethod
    def _continue(self, run: Run, store: RunStore, callbacks, on_trainer, loaded):
        """:meth:`resume` of a checked run."""

    @abstractmethod
    def _evaluate(self, run: Run, store: RunStore, n_samples: int | None, split: str):
        """:meth:`evaluate` of a checked run."""

    def load(self, setup, note: Callable[[str], None] | None = None):
        """What the runs on ``setup`` share, loaded once and passed to :meth:`train` and
        :meth:`resume` as ``loaded`` (``note(text)`` is told what is being loaded); ``None``
        when the task keeps nothing between runs."""
        return None

    def reusable(self, loaded, setup) -> bool:
        """Whether ``loaded`` (an earlier :meth:`load`, of any task, or ``None``) serves ``setup``."""
        return loaded is None

    def prepare(self, setup, progress: Callable[[float, str], None]) -> None:
        """Do now, telling ``progress(fraction, text)`` how far it is, the slow preparation a run
        on ``setup`` would otherwise do silently inside :meth:`train` (the job worker calls it
        before :meth:`train` / :meth:`resume`); by default there is none."""

    # ------------------------------------------------------------------ stored runs

    def stored_run(self, store: RunStore, run_id: int, action: str) -> Run:
        """Stored run ``run_id``, checked to be a train run of this task with a checkpoint folder
        (``ValueError`` saying why not; ``action``: "resumed" or "evaluated")."""
        run = _train_run(store, run_id, action)
        if getattr(task_of(run), "name", None) != self.name:
            raise ValueError(f"run {run_id}: not a {self.name}-task train run (task={run.config.get('task')!r}); "
                             "cannot rebuild it")
        if not run.config.get("checkpoint_dir"):
            raise ValueError(f"run {run_id}: was started without a checkpoint folder (--checkpoint-dir); "
                             f"it cannot be {action}")
        return run


class TextTraining(TrainingTask):
    """The synthetic text task (:mod:`mopo_core.training.text_task`)."""

    name = "text"

    def __init__(self):
        #: (setup, built task) from :meth:`prepare`, taken by the next :meth:`train` or :meth:`resume` on that setup
        self._prepared = None

    def setup_from(self, stored: dict):
        from mopo_core.training.text_task import TextTaskSetup

        return TextTaskSetup(**{f.name: stored[f.name] for f in fields(TextTaskSetup) if f.name in stored})

    def run_setup(self, run_config: dict):
        return self.setup_from(run_config.get("text_setup", run_config))  # older runs: the flat keys

    def measurement(self, run_config: dict) -> tuple:
        return ()  # the task, its prompts and its exact oracles are the same for every run

    def check(self, config, setup, models_folder=None) -> None:
        from mopo_core.training.text_task import check_text_run

        check_text_run(config, setup)

    def prepare(self, setup, progress) -> None:
        """Build the task for ``setup``, its reference model fitted (or read from its cache,
        :mod:`mopo_core.training.reference_cache`), and keep it for the next :meth:`train` or
        :meth:`resume` on ``setup``, which then builds nothing."""
        from mopo_core.training.text_task import build_text_task

        self._prepared = (setup, build_text_task(setup, progress=progress))

    def _take_prepared(self, setup):
        """What :meth:`prepare` built for ``setup`` (None: nothing, or for another setup); kept no longer."""
        prepared, self._prepared = self._prepared, None
        return prepared[1] if prepared is not None and prepared[0] == setup else None

    def train(self, config, setup, store, checkpoint_dir=None, callbacks=(), on_trainer=None, loaded=None):
        from mopo_core.training.text_task import train_on_text_task

        return train_on_text_task(config, setup, store, checkpoint_dir, callbacks, on_trainer,
                                  built=self._take_prepared(setup))

    def _continue(self, run, store, callbacks, on_trainer, loaded):
        from mopo_core.training.text_task import train_on_text_task

        setup = self.run_setup(run.config)
        return train_on_text_task(train_config_from(run.config), setup, store, run.config["checkpoint_dir"],
                                  callbacks, on_trainer, resume_run_id=run.id, built=self._take_prepared(setup))

    def _evaluate(self, run, store, n_samples, split):
        from mopo_core.training.text_task import evaluate_text_checkpoint

        return evaluate_text_checkpoint(store, run.id, train_config_from(run.config), self.run_setup(run.config),
                                        run.config["checkpoint_dir"], n_samples, split)


class DatasetTraining(TrainingTask):
    """A local checkpoint on a preference file, judged by a preference model
    (:mod:`mopo_core.training.dataset_task`). Its setup errors are
    :class:`~mopo_core.training.dataset_task.SetupError` (naming the field); it evaluates on
    the run's test prompts only (its judge may have been fitted on the others)."""

    name = "dataset"
    #: DatasetSetup fields that decide how a dataset run's point is measured: the test prompts
    #: (data, split), the reference and its samples, and the judge. (LoRA, dtype and the
    #: training settings are what runs on one plane differ in.)
    MEASUREMENT_FIELDS = ("data", "format", "objective", "split", "split_seed", "max_response_tokens", "prefmodel",
                          "eval_samples", "max_new_tokens", "eval_seed")

    def setup_from(self, stored: dict):
        from mopo_core.training.dataset_task import DatasetSetup

        return DatasetSetup(**{**stored, "split": tuple(stored["split"])})

    def run_setup(self, run_config: dict):
        return self.setup_from(run_config["dataset_setup"])

    def measurement(self, run_config: dict) -> tuple:
        setup = run_config.get("dataset_setup") or {}
        return (run_config.get("model_dir"), *(setup.get(f) for f in self.MEASUREMENT_FIELDS))

    def check(self, config, setup, models_folder=None) -> None:
        from mopo_core.training.dataset_task import check_setup

        config.validate(len(check_setup(setup, models_folder).objectives))

    def train(self, config, setup, store, checkpoint_dir=None, callbacks=(), on_trainer=None, loaded=None):
        from mopo_core.training.dataset_task import train_on_dataset

        return train_on_dataset(config, setup, store, checkpoint_dir, callbacks, on_trainer, task=loaded)

    def _continue(self, run, store, callbacks, on_trainer, loaded):
        from mopo_core.training.dataset_task import train_on_dataset

        return train_on_dataset(train_config_from(run.config), self.run_setup(run.config), store,
                                Path(run.config["checkpoint_dir"]), callbacks, on_trainer, task=loaded,
                                resume_run_id=run.id)

    def _evaluate(self, run, store, n_samples, split):
        from mopo_core.training.dataset_task import SetupError, evaluate_dataset_checkpoint

        if split != "test":
            raise SetupError("split", f"run {run.id} trained on a preference file is evaluated on its test prompts "
                                      "only (its judge may have been fitted on the others)")
        try:
            return evaluate_dataset_checkpoint(store, run.id, train_config_from(run.config),
                                               self.run_setup(run.config), run.config["checkpoint_dir"], n_samples)
        except SetupError as exc:
            raise ValueError(f"run {run.id}: its setup no longer checks: {exc}") from None

    def load(self, setup, note: Callable[[str], None] | None = None):
        from mopo_core.training.dataset_task import DatasetTask

        if note is not None:
            note(f"loading {setup.model}, {setup.data} and the judge {setup.prefmodel}")
        return DatasetTask(setup)

    def reusable(self, loaded, setup) -> bool:
        return getattr(loaded, "setup", None) == setup


#: The tasks by name (a run config's ``task``).
TASKS: dict[str, TrainingTask] = {task.name: task for task in (TextTraining(), DatasetTraining())}


def task_named(name: str) -> TrainingTask:
    """The task called ``name``; ``ValueError`` for an unknown name."""
    if name not in TASKS:
        raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name]


def task_for_setup(setup) -> TrainingTask:
    """The task that trains on ``setup`` (each setup class names its task)."""
    return task_named(getattr(setup, "task", None))


def task_of_job_kind(kind: str) -> TrainingTask:
    """The task a new-run job of ``kind`` trains (:attr:`TrainingTask.job_kind`)."""
    found = [task for task in TASKS.values() if task.job_kind == kind]
    if not found:
        raise ValueError(f"job kind: expected one of {', '.join(t.job_kind for t in TASKS.values())}, got {kind!r}")
    return found[0]


def task_of(run: Run) -> TrainingTask | None:
    """The task a stored run trained: a ``train`` run whose config names a known task; ``None``
    for any other run."""
    return TASKS.get((run.config or {}).get("task")) if run.kind == "train" else None


def task_of_run(store: RunStore, run_id: int, action: str) -> TrainingTask:
    """The task of stored run ``run_id`` (:func:`task_of`); ``ValueError`` saying why for an
    unknown run, one that is not a train run or one of no known task (``action``: what was
    asked of it, e.g. "resumed")."""
    run = _train_run(store, run_id, action)
    task = task_of(run)
    if task is None:
        raise ValueError(f"run {run_id}: not a train run of a known task (task={run.config.get('task')!r}, "
                         f"expected one of {', '.join(TASKS)}); it cannot be {action}")
    return task


def _train_run(store: RunStore, run_id: int, action: str) -> Run:
    try:
        run = store.get_run(run_id)
    except KeyError:
        raise ValueError(f"run {run_id}: not found in the run store {store.path}") from None
    if run.kind != "train":
        raise ValueError(f"run {run_id}: is a {run.kind!r} run, not a train run; only train runs can be {action}")
    return run
