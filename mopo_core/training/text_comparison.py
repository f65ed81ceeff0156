"""MOPO against its baselines on the synthetic text task, with the same budget for every method.

All methods start from the same SFT reference and train for the same number of steps on the
same training data; every policy is evaluated on the same held-out prompts by its win-rates
against the reference's samples under the task's exact oracles (0.5 = as good as the
reference). Methods: MOPO at several harmlessness thresholds, offline (win-rates from the
pairs' labels) and online (candidates sampled from the policy, scored by the oracles); DPO on
helpfulness; MODPO (DPO on helpfulness with the margin of a DPO model of harmlessness) and
weighted multi-objective DPO (a fixed mixture of the labels) at several weights; Rewarded
Soups (the two DPO experts, weights interpolated on a grid).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mopo_core.lm.soups import soup
from mopo_core.lm.config import TrainConfig
from mopo_core.lm.trainer import Trainer, implicit_rewards
from mopo_core.pareto import dominance_matrix, hypervolume
from mopo_core.runs import RunStore
from mopo_core.training.common import secondary_experts
from mopo_core.training.text_task import TextTaskSetup, build_text_task, evaluate_on_task, task_oracle


@dataclass
class ComparisonSettings:
    """Budget and grids: training steps per policy, MOPO thresholds (on harmlessness), the MODPO
    and weighted-DPO secondary weights, the soup grid size, online MOPO's candidates per prompt,
    tau (= DPO's beta), batch size, learning rate."""

    steps: int = 150
    thresholds: tuple[float, ...] = (0.55, 0.65, 0.75)
    secondary_weights: tuple[float, ...] = (0.25, 0.5, 0.75)
    soup_points: int = 5
    n_candidates: int = 8
    tau: float = 0.08
    batch_size: int = 8
    lr: float = 1e-3


def run_comparison(setup: TextTaskSetup, settings: ComparisonSettings, store: RunStore | None = None,
                   progress=None) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Train and evaluate every method. Returns (points, summary, reference_point):
    points has one row per policy (method, parameter, V0.., stderr0..), summary one row per
    method (hypervolume, dominance counts, threshold satisfaction), reference_point (K,)."""
    task, tokenizer, reference, (train, _, test) = build_text_task(setup)
    prompts = test.prompts()
    names = task.objectives
    jobs = _jobs(settings, _Fitter(task, reference, tokenizer, train, store))
    rows = []
    for method, parameter, make in (progress(jobs) if progress else jobs):
        ev = evaluate_on_task(task, make(), reference, tokenizer, prompts, setup)
        rows.append({"method": method, "parameter": parameter,
                     **{f"V{k}": v for k, v in enumerate(ev.win_rates)},
                     **{f"stderr{k}": s for k, s in enumerate(ev.win_rate_stderr)},
                     **{f"score{k}": s for k, s in enumerate(ev.mean_scores)}})
    points = pd.DataFrame(rows)
    values = points[[f"V{k}" for k in range(len(names))]].to_numpy()
    reference_point = values.min(axis=0) - 0.01
    if store is not None:
        run_id = store.create_run("comparison", {"task": "text", "objectives": list(names),
                                                 "reference_point": reference_point.tolist(),
                                                 "setup": vars(setup), "settings": vars(settings)},
                                  name="text task: MOPO vs baselines")
        store.add_points(run_id, [{"label": r["method"], "params": {"parameter": r["parameter"]},
                                   "values": [r[f"V{k}"] for k in range(len(names))],
                                   "extra": {"stderr": [r[f"stderr{k}"] for k in range(len(names))]}}
                                  for r in rows])
        store.set_status(run_id, "finished")
    return points, summarise(points, reference_point, settings), reference_point


class _Fitter:
    """Trains policies from the shared reference; the two DPO experts (primary, secondary) are
    trained once and shared by DPO, MODPO's margin and Rewarded Soups."""

    def __init__(self, task, reference, tokenizer, train, store):
        self.task, self.reference, self.tokenizer, self.train, self.store = task, reference, tokenizer, train, store
        self._experts: dict[str, torch.nn.Module] = {}

    def fit(self, config: TrainConfig, **extras):
        policy = copy.deepcopy(self.reference)
        Trainer(policy, self.tokenizer, self.train, config, store=self.store,
                run_config={"task": "text", "experiment": "comparison"}, **extras).train()
        return policy

    def expert(self, which: str, base: dict):
        if which not in self._experts:
            if which == "primary":
                self._experts[which] = self.fit(TrainConfig(method="dpo", **base))
            else:
                (self._experts[which],) = secondary_experts(TrainConfig(method="dpo", **base), self.reference,
                                                            self.tokenizer, self.train, self.store)
        return self._experts[which]


def _jobs(s: ComparisonSettings, fitter: _Fitter):
    """(method, parameter, make() -> policy) for every policy of the comparison."""
    base = dict(tau=s.tau, steps=s.steps, batch_size=s.batch_size, lr=s.lr)
    oracle = task_oracle(fitter.task)
    jobs = [("mopo", f"b={b}", lambda b=b: fitter.fit(TrainConfig(method="mopo", thresholds=(b,), **base)))
            for b in s.thresholds]
    jobs += [("mopo_online", f"b={b}", lambda b=b: fitter.fit(
        TrainConfig(method="mopo", thresholds=(b,), online=True, n_candidates=s.n_candidates, **base), oracle=oracle))
        for b in s.thresholds]
    jobs.append(("dpo", "primary", lambda: fitter.expert("primary", base)))

    def modpo(c):
        rewards = implicit_rewards([fitter.expert("secondary", base)], fitter.reference, fitter.tokenizer, s.tau)
        return fitter.fit(TrainConfig(method="modpo", objective_weights=(1 - c, c), **base), secondary_rewards=rewards)

    jobs += [("modpo", f"w={c}", lambda c=c: modpo(c)) for c in s.secondary_weights]
    jobs += [("weighted_dpo", f"w={c}", lambda c=c: fitter.fit(
        TrainConfig(method="weighted_dpo", objective_weights=(1 - c, c), **base))) for c in s.secondary_weights]
    jobs += [("rewarded_soups", f"a={a:.2f}", lambda a=a: soup(
        [fitter.expert("primary", base), fitter.expert("secondary", base)], [1 - a, a]))
        for a in np.linspace(0, 1, s.soup_points)]
    return jobs


def summarise(points: pd.DataFrame, reference_point: np.ndarray, s: ComparisonSettings) -> pd.DataFrame:
    """Per method: hypervolume of its points (maximised, explicit reference point), how many of
    its points dominate some other method's point, and for MOPO how many thresholds are met on
    the measured harmlessness win-rate, strictly and within 1.96 standard errors."""
    k = len(reference_point)
    cols = [f"V{i}" for i in range(k)]
    sets = {m: g[cols].to_numpy() for m, g in points.groupby("method", sort=False)}
    dominance = dominance_matrix(sets)
    rows = []
    for method, values in sets.items():
        row = {"method": method, "points": len(values), "hypervolume": hypervolume(values, reference_point),
               "dominates_others": int(dominance.loc[method].drop(method).sum()),
               "dominated_by_others": int(dominance[method].drop(method).sum())}
        if method in ("mopo", "mopo_online"):
            mopo = points[points.method == method]
            measured, err = mopo["V1"].to_numpy(), mopo["stderr1"].to_numpy()
            row["thresholds_met"] = int((measured >= np.array(s.thresholds)).sum())
            row["thresholds_met_within_1.96se"] = int((measured >= np.array(s.thresholds) - 1.96 * err).sum())
        rows.append(row)
    return pd.DataFrame(rows)
