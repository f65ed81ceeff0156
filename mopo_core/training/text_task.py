"""Training runs on the synthetic text task, end to end: data, reference model (SFT), training,
evaluation against the reference, all recorded in the run store. Used by ``python -m mopo_core
train``; everything is built locally (no download).

A run's stored config holds everything needed to rebuild it: the :class:`TrainConfig` fields,
the :class:`TextTaskSetup` (under ``text_setup``, and flat for older readers) and the absolute
``checkpoint_dir``. :func:`resume_text_run` rebuilds the same task, tokenizer and reference (all
seeded) and continues the run from ``checkpoint_dir/last.pt``; the metrics the store holds for
steps after the checkpoint (logged by a process that was killed before its next checkpoint) are
dropped first, so the resumed series equals an uninterrupted run's. A run that ends
``cancelled`` is not evaluated (no point is added); it gets its point when a resume finishes it.

A run whose process was killed (SIGKILL, power loss) keeps status ``running``: nothing is left
to update it. :func:`resume_text_run` accepts such runs once their owning process is gone: a
run still training in a live process (its owner, recorded in the store by the trainer: pid
and start time, see :mod:`mopo_core.training.jobs`) is refused, naming that process.

Checkpoints are read with ``torch.load(weights_only=True)`` only
(:func:`mopo_core.lm.trainer.read_checkpoint`): a ``last.pt`` that holds anything but tensors
and plain types is refused with its path, before any of it runs."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from synthetic.text_task import TextTask, preference, score, vocabulary

from mopo_core.lm.evaluation import Evaluation, evaluate_policy
from mopo_core.training.jobs import check_run_owner
from mopo_core.lm.trainer import TrainConfig, Trainer, TrainResult, implicit_rewards, read_checkpoint
from mopo_core.lm.models import tiny_gpt, train_sft, word_tokenizer
from mopo_core.data.preferences import PreferenceDataset
from mopo_core.runs import RunStore


@dataclass
class TextTaskSetup:
    """Task size and the reference model's SFT budget."""

    n_prompts: int = 40
    n_candidates: int = 8
    pairs_per_prompt: int = 8
    temperature: float = 0.1
    sft_steps: int = 300
    eval_samples: int = 8
    seed: int = 0


def text_task(setup: TextTaskSetup) -> TextTask:
    """The task ``setup`` describes (its constructor refuses bad fields, naming them)."""
    return TextTask(n_prompts=setup.n_prompts, n_candidates=setup.n_candidates, temperature=setup.temperature,
                    seed=setup.seed)


def check_text_run(config: TrainConfig, setup: TextTaskSetup) -> None:
    """``ValueError`` naming the field for a bad ``setup``, or a ``config`` that does not fit the
    task's objectives; cheap (no model is built)."""
    config.validate(len(text_task(setup).objectives))


def build_text_task(setup: TextTaskSetup):
    """(task, tokenizer, reference model, train/validation/test datasets) for ``setup``."""
    task = text_task(setup)
    records = [r for r in task.sample_pairs(setup.pairs_per_prompt, seed=setup.seed)
               if r["response_a"] != r["response_b"]]  # identical candidates carry no preference
    train, validation, test = PreferenceDataset.from_records(records, origin="text task").split(seed=setup.seed)
    tokenizer = word_tokenizer(vocabulary())
    reference = tiny_gpt(len(tokenizer), seed=setup.seed)
    train_sft(reference, tokenizer, task.corpus(), steps=setup.sft_steps, seed=setup.seed)
    return task, tokenizer, reference, (train, validation, test)


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


def secondary_experts(config: TrainConfig, reference, tokenizer, train: PreferenceDataset, store=None,
                      run_config: dict | None = None) -> list:
    """One DPO policy per secondary objective, trained from a copy of ``reference`` (e.g. a
    LoRA-wrapped starting model) on that objective's labels with ``config``'s budget (tau,
    steps, batch size, lr, seed): MODPO's margin models and Rewarded Soups' secondary experts.
    Each expert's run in ``store`` gets ``run_config`` (default ``{"task": "text"}``) and its role."""
    import copy

    experts = []
    for name in train.objectives[1:]:
        expert = copy.deepcopy(reference)
        dpo = TrainConfig(method="dpo", tau=config.tau, steps=config.steps, batch_size=config.batch_size,
                          lr=config.lr, seed=config.seed, checkpoint_every=config.steps)
        Trainer(expert, tokenizer, train.select([name]), dpo, store=store,
                run_config={**(run_config or {"task": "text"}), "role": f"secondary expert ({name})"}).train()
        experts.append(expert.eval())
    return experts


#: Statuses a run can be resumed from (``running``: its process died without updating it).
RESUMABLE_STATUSES = ("running", "cancelled", "interrupted", "failed")


def train_on_text_task(config: TrainConfig, setup: TextTaskSetup, store: RunStore,
                       checkpoint_dir: str | Path | None = None, callbacks=(),
                       on_trainer: Callable[[Trainer], None] | None = None) -> tuple[TrainResult, Evaluation | None]:
    """SFT a reference, train ``config.method`` from it, evaluate on the held-out prompts and
    record the evaluation as the run's point (values: win-rates against the reference).

    ``on_trainer(trainer)`` is called once the trainer is built, before training (e.g. to
    hook ``trainer.request_cancel`` to a signal). A run that ends ``cancelled`` is not
    evaluated: the evaluation is ``None`` and no point is added. A bad config is refused before
    the reference is trained."""
    check_text_run(config, setup)
    checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir).expanduser().resolve()
    return _train_and_evaluate(config, setup, store, checkpoint_dir, callbacks, on_trainer)


def resume_text_run(store: RunStore, run_id: int, callbacks=(),
                    on_trainer: Callable[[Trainer], None] | None = None) -> tuple[TrainResult, Evaluation | None]:
    """Continue the text-task run ``run_id`` from its checkpoint to its configured steps, then
    evaluate and add its point as :func:`train_on_text_task` does.

    The train config, task setup and checkpoint folder come from the run's stored config; the
    task, tokenizer and reference are rebuilt with the same seeds. Raises ``ValueError`` for an
    unknown run, a run that is not a text-task train run, a finished run, a run that a live
    process is training (naming it), a run without a checkpoint folder or checkpoint, a
    checkpoint that cannot be read with ``weights_only=True`` or was written with another
    config (naming the file); a refused run is left as it was."""
    run, config, setup, checkpoint_dir = _stored_text_run(store, run_id, "resumed")
    if run.status not in RESUMABLE_STATUSES:
        state = "already finished" if run.status == "finished" else f"status {run.status!r}"
        raise ValueError(f"run {run_id}: {state}; only runs that are {', '.join(RESUMABLE_STATUSES)} can be resumed")
    check_run_owner(store.path, run_id)
    read_checkpoint(run_id, checkpoint_dir, config)
    return _train_and_evaluate(config, setup, store, checkpoint_dir, callbacks, on_trainer, resume_run_id=run_id)


def evaluate_text_run(store: RunStore, run_id: int, n_samples: int | None = None,
                      split: str = "test") -> tuple[int, Evaluation]:
    """Evaluate the policy in the checkpoint of text-task train run ``run_id`` (finished or not)
    against the rebuilt reference on the ``split`` ("test" or "validation") prompts, with
    ``n_samples`` samples per prompt and model (default: the run's ``eval_samples``).

    Records an ``evaluate`` run (config: the source run, its step, split, samples) whose point
    is the evaluation; returns (that run's id, the evaluation). Raises ``ValueError`` for the
    same unusable runs as :func:`resume_text_run` (finished runs are fine) and a bad split."""
    import copy

    splits = ("train", "validation", "test")
    if split not in splits[1:]:
        raise ValueError(f"split: expected 'test' or 'validation', got {split!r}")
    run, config, setup, checkpoint_dir = _stored_text_run(store, run_id, "evaluated")
    state = read_checkpoint(run_id, checkpoint_dir, config)
    task, tokenizer, reference, datasets = build_text_task(setup)
    policy = copy.deepcopy(reference)
    policy.load_state_dict(state["model"])
    samples = n_samples or setup.eval_samples
    with store.record("evaluate", {"source_run": run_id, "step": int(state["step"]), "split": split,
                                   "eval_samples": samples, "method": config.method},
                      name=f"evaluate run {run_id} at step {state['step']}") as eval_id:
        evaluation = evaluate_on_task(task, policy, reference, tokenizer, datasets[splits.index(split)].prompts(),
                                      setup, n_samples=samples)
        store.add_points(eval_id, [evaluation.as_point(config.method, _point_params(config))])
    return eval_id, evaluation


def _point_params(config: TrainConfig) -> dict:
    return {"method": config.method, "thresholds": list(config.thresholds), "tau": config.tau,
            "online": config.online, "objective_weights": config.objective_weights}


def _stored_text_run(store: RunStore, run_id: int, action: str):
    """(run, train config, task setup, checkpoint folder) of a stored text-task train run."""
    try:
        run = store.get_run(run_id)
    except KeyError:
        raise ValueError(f"run {run_id}: not found in the run store {store.path}") from None
    if run.kind != "train":
        raise ValueError(f"run {run_id}: is a {run.kind!r} run, not a train run; only train runs can be {action}")
    cfg = run.config
    if cfg.get("task") != "text":
        raise ValueError(f"run {run_id}: not a text-task train run (task={cfg.get('task')!r}); cannot rebuild it")
    if not cfg.get("checkpoint_dir"):
        raise ValueError(f"run {run_id}: was started without a checkpoint folder (--checkpoint-dir); "
                         f"it cannot be {action}")
    return run, train_config_from(cfg), text_setup_from(cfg), Path(cfg["checkpoint_dir"])


def train_config_from(cfg: dict) -> TrainConfig:
    """The :class:`TrainConfig` of a stored train run's config (lists back to tuples)."""
    values = {f.name: cfg[f.name] for f in fields(TrainConfig) if f.name in cfg}
    if "thresholds" in values:
        values["thresholds"] = tuple(float(b) for b in values["thresholds"])
    return TrainConfig(**values)


def text_setup_from(cfg: dict) -> TextTaskSetup:
    """The :class:`TextTaskSetup` of a stored text-task run's config (``text_setup``; older
    runs: the flat keys)."""
    stored = cfg.get("text_setup", cfg)
    return TextTaskSetup(**{f.name: stored[f.name] for f in fields(TextTaskSetup) if f.name in stored})


def _train_and_evaluate(config: TrainConfig, setup: TextTaskSetup, store: RunStore, checkpoint_dir: Path | None,
                        callbacks, on_trainer, resume_run_id: int | None = None):
    import copy

    task, tokenizer, reference, (train, _, test) = build_text_task(setup)
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
                      callbacks=tuple(callbacks), run_config=run_config, **extras)
    if on_trainer is not None:
        on_trainer(trainer)
    result = trainer.train(resume_run_id=resume_run_id)
    if result.status != "finished" or not trainer.is_main:  # under torchrun process 0 evaluates and records
        return result, None
    evaluation = evaluate_on_task(task, policy, reference, tokenizer, test.prompts(), setup)
    store.add_points(result.run_id, [evaluation.as_point(config.method, _point_params(config))])
    return result, evaluation
