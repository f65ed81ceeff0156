"""Training runs on the synthetic text task, end to end: data, reference model (SFT), training,
evaluation against the reference, all recorded in the run store. Used by ``python -m mopo_core
train``; everything is built locally (no download)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from synthetic.text_task import TextTask, preference, score, vocabulary

from .lm_eval import Evaluation, evaluate_policy
from .lm_trainer import Trainer, TrainConfig, TrainResult
from .models import tiny_gpt, train_sft, word_tokenizer
from .preferences import PreferenceDataset
from .runs import RunStore


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


def build_text_task(setup: TextTaskSetup):
    """(task, tokenizer, reference model, train/validation/test datasets) for ``setup``."""
    task = TextTask(n_prompts=setup.n_prompts, n_candidates=setup.n_candidates, temperature=setup.temperature,
                    seed=setup.seed)
    records = [r for r in task.sample_pairs(setup.pairs_per_prompt, seed=setup.seed)
               if r["response_a"] != r["response_b"]]  # identical candidates carry no preference
    train, validation, test = PreferenceDataset.from_records(records, origin="text task").split(seed=setup.seed)
    tokenizer = word_tokenizer(vocabulary())
    reference = tiny_gpt(len(tokenizer), seed=setup.seed)
    train_sft(reference, tokenizer, task.corpus(), steps=setup.sft_steps, seed=setup.seed)
    return task, tokenizer, reference, (train, validation, test)


def evaluate_on_task(task: TextTask, policy, reference, tokenizer, prompts: list[str], setup: TextTaskSetup) -> Evaluation:
    """Win-rates of ``policy`` against ``reference`` under the task's oracles, on ``prompts``."""
    objectives = task.objectives

    def oracle(prompt, a, b):
        return np.array([preference(prompt, a, b, k, task.temperature) for k in objectives])

    def scorer(prompt, response):
        return score(prompt, response, objectives)

    return evaluate_policy(policy, reference, tokenizer, prompts, oracle, scorer, objectives,
                           n_samples=setup.eval_samples, seed=setup.seed)


def train_on_text_task(config: TrainConfig, setup: TextTaskSetup, store: RunStore,
                       checkpoint_dir: str | Path | None = None, callbacks=()) -> tuple[TrainResult, Evaluation]:
    """SFT a reference, train ``config.method`` from it, evaluate on the held-out prompts and
    record the evaluation as the run's point (values: win-rates against the reference)."""
    import copy

    task, tokenizer, reference, (train, _, test) = build_text_task(setup)
    policy = copy.deepcopy(reference)
    trainer = Trainer(policy, tokenizer, train, config, store=store, checkpoint_dir=checkpoint_dir,
                      callbacks=callbacks, run_config={"task": "text", **asdict(setup)})
    result = trainer.train()
    evaluation = evaluate_on_task(task, policy, reference, tokenizer, test.prompts(), setup)
    params = {"method": config.method, "thresholds": list(config.thresholds), "tau": config.tau}
    store.add_points(result.run_id, [evaluation.as_point(config.method, params)])
    return result, evaluation
