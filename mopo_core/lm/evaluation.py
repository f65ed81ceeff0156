"""Evaluate a language-model policy against its reference on held-out prompts.

For each prompt, ``n_samples`` responses are sampled from the policy and from the reference.
Per objective k the policy's win-rate is the mean over all (policy sample, reference sample)
pairs of the objective's preference oracle ``P_k(policy sample beats reference sample)``
(MOPO.md section 1: a value is an expected win-rate against the behaviour policy, here the
reference's samples), and the mean score is the scorer's average over the policy's samples.
A win-rate of 0.5 means "as good as the reference". The standard error of each win-rate is
reported (prompt-level: the spread of per-prompt win-rates / sqrt(number of prompts)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from mopo_core.lm.models import sample

#: oracle(prompt, a, b) -> (K,) probabilities that a beats b on each objective.
Oracle = Callable[[str, str, str], np.ndarray]
#: scorer(prompt, response) -> (K,) scores.
Scorer = Callable[[str, str], np.ndarray]
#: What a run-store point keeps of the evaluation's generations (:meth:`Evaluation.as_point`):
#: the first ``POINT_PROMPTS`` prompts and the first ``POINT_SAMPLES`` samples of each model per
#: prompt, so that a run's details can show them (a few KiB per point; the store stays small).
POINT_PROMPTS = 8
POINT_SAMPLES = 4


@dataclass
class Evaluation:
    """win_rates (K,), win_rate_stderr (K,), mean_scores (K,), reference_scores (K,), the
    objectives' names, and the samples {prompt: {"policy": [...], "reference": [...]}}."""

    objectives: tuple[str, ...]
    win_rates: np.ndarray
    win_rate_stderr: np.ndarray
    mean_scores: np.ndarray
    reference_scores: np.ndarray
    samples: dict

    def as_point(self, label: str, params: dict, max_prompts: int = POINT_PROMPTS,
                 max_samples: int = POINT_SAMPLES) -> dict:
        """A run-store point: values are the win-rates against the reference (maximised).

        ``extra["samples"]``: :meth:`sample_records` (at most ``max_prompts`` prompts and
        ``max_samples`` samples of each model per prompt); ``extra["samples_kept"]`` says how
        many of how many were kept."""
        records = self.sample_records(max_prompts, max_samples)
        per_prompt = max((len(v["policy"]) for v in self.samples.values()), default=0)
        return {"label": label, "params": params, "values": self.win_rates.tolist(),
                "extra": {"win_rate_stderr": self.win_rate_stderr.tolist(),
                          "mean_scores": self.mean_scores.tolist(),
                          "reference_scores": self.reference_scores.tolist(),
                          "objectives": list(self.objectives),
                          "samples": records,
                          "samples_kept": {"prompts": len(records), "of_prompts": len(self.samples),
                                           "per_prompt": min(per_prompt, max_samples), "of_per_prompt": per_prompt}}}

    def sample_records(self, max_prompts: int = POINT_PROMPTS, max_samples: int = POINT_SAMPLES) -> list[dict]:
        """``[{"prompt", "policy": [...], "reference": [...]}]``: the first ``max_prompts``
        prompts (in evaluation order) with the first ``max_samples`` samples of each model."""
        return [{"prompt": prompt, "policy": list(pair["policy"][:max_samples]),
                 "reference": list(pair["reference"][:max_samples])}
                for prompt, pair in list(self.samples.items())[:max_prompts]]


def evaluate_policy(policy, reference, tokenizer, prompts: list[str], oracle: Oracle, scorer: Scorer,
                    objectives: tuple[str, ...], n_samples: int = 8, max_new_tokens: int = 16,
                    temperature: float = 1.0, seed: int = 0) -> Evaluation:
    """Sample from both models on ``prompts`` and compare them under ``oracle`` and ``scorer``."""
    if not prompts:
        raise ValueError("prompts: need at least one held-out prompt")
    per_prompt, scores, ref_scores, samples = [], [], [], {}
    for i, prompt in enumerate(prompts):
        mine = sample(policy, tokenizer, [prompt], n_samples, max_new_tokens, temperature, seed + i)
        theirs = sample(reference, tokenizer, [prompt], n_samples, max_new_tokens, temperature, seed + i)
        samples[prompt] = {"policy": mine, "reference": theirs}
        per_prompt.append(np.mean([oracle(prompt, a, b) for a in mine for b in theirs], axis=0))
        scores.append(np.mean([scorer(prompt, a) for a in mine], axis=0))
        ref_scores.append(np.mean([scorer(prompt, b) for b in theirs], axis=0))
    per_prompt = np.array(per_prompt)
    stderr = per_prompt.std(axis=0, ddof=1) / np.sqrt(len(prompts)) if len(prompts) > 1 else np.full(
        per_prompt.shape[1], np.nan)
    return Evaluation(tuple(objectives), per_prompt.mean(axis=0), stderr, np.mean(scores, axis=0),
                      np.mean(ref_scores, axis=0), samples)
