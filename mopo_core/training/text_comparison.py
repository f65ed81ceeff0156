"""MOPO against its baselines on the synthetic text task: equal label budgets, several training
seeds, and a table of 95% confidence intervals over the seeds.

Methods: MOPO at several harmlessness thresholds, offline (win-rates from the pairs' labels)
and online (candidates sampled from the policy, scored by the oracle); DPO on helpfulness;
MODPO (DPO on helpfulness with the margin of a DPO model of harmlessness) and weighted
multi-objective DPO (a fixed mixture of the labels) at several weights; Rewarded Soups (the two
DPO experts, weights interpolated on a grid). All start from the same SFT reference (built once
with the setup's seed) and train for the same number of steps with the same batch size.

Label budget (:attr:`ComparisonSettings.label_budget`). Every method gets the same number of
oracle-labelled comparisons, each labelled with the oracle's probability (soft labels, what online
MOPO's oracle returns): online MOPO scores each unordered pair of its pools once, ``steps x
batch_size x n_candidates (n_candidates - 1) / 2`` oracle calls; the offline methods (offline
MOPO, DPO, MODPO, weighted DPO and the soups' experts) all train on one training set of exactly
that many pairs of the task's candidates (the reference's SFT corpus) on the training prompts
(:attr:`TextTaskSetup.train_pairs`); an expert uses its own objective's labels of the same pairs.
Each policy's ``labels`` are counted: the oracle calls its trainer made (online), the pairs of the
training set it and its experts trained on (offline; their trainers draw batches from it).

Seeds. Each policy is trained ``seeds`` times (``TrainConfig.seed`` 0, 1, ...: batches, online
samples); the reference and the training pairs are the same for all seeds.

Evaluation. Every policy on the same first ``eval_prompts`` held-out prompts (the validation then
the test split; nothing is tuned on either): its win-rates against the reference's samples under
the exact oracles (0.5 = as good as the reference) and KL(policy || reference) in nats per
response (the exact per-token KL summed over each of ``eval_samples`` responses sampled from the
policy per prompt, :func:`mopo_core.lm.losses.policy_reference_scores`, averaged). Both are
sampled with the setup's seed: the same policy evaluated twice gives the same numbers.

The table (:func:`summarise`): per (method, parameter), the mean over seeds of each objective's
win-rate, of the KL and, for MOPO, of ``V1 - b``, each with the half-width of its 95% Student-t
interval (:func:`mopo_core.experiments.suite.mean_ci`); MOPO's constraint is "tight" when the
interval of ``V1 - b`` contains 0, "met" when it lies above 0 and "violated" below. Rows dominate
each other by :func:`ci_dominates`. The per-method hypervolume is of its rows' seed means, above an
explicit reference point 0.01 below the worst seed mean on each objective.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch

from mopo_core.experiments.suite import CONFIDENCE, mean_ci
from mopo_core.lm.config import TrainConfig
from mopo_core.lm.losses import policy_reference_scores
from mopo_core.lm.models import sample
from mopo_core.lm.soups import soup
from mopo_core.lm.trainer import Trainer, encode_rows, implicit_rewards
from mopo_core.pareto import hypervolume
from mopo_core.runs import RunStore
from mopo_core.training.common import secondary_experts
from mopo_core.training.text_task import TextTaskSetup, build_text_task, evaluate_on_task, task_oracle
from mopo_core.validation import check_int

MOPO_METHODS = ("mopo", "mopo_online")


@dataclass
class ComparisonSettings:
    """Budget and grids: training steps per policy, MOPO thresholds (on harmlessness), the MODPO
    and weighted-DPO secondary weights, the soup grid size, online MOPO's candidates per prompt
    (which sets the label budget), tau (= DPO's beta), batch size, learning rate, training seeds
    (at least 2, for an interval) and held-out evaluation prompts."""

    steps: int = 150
    thresholds: tuple[float, ...] = (0.55, 0.65, 0.75)
    secondary_weights: tuple[float, ...] = (0.25, 0.5, 0.75)
    soup_points: int = 5
    n_candidates: int = 2
    tau: float = 0.08
    batch_size: int = 8
    lr: float = 1e-3
    seeds: int = 5
    eval_prompts: int = 48

    @property
    def label_budget(self) -> int:
        """Oracle-labelled comparisons per method: online MOPO's pairs, ``steps x batch_size x
        n_candidates (n_candidates - 1) / 2``."""
        return self.steps * self.batch_size * self.n_candidates * (self.n_candidates - 1) // 2

    def validate(self) -> None:
        """``ValueError`` naming the first bad field."""
        for name in ("steps", "soup_points", "batch_size", "eval_prompts"):
            check_int(getattr(self, name), name, 1)
        check_int(self.n_candidates, "n_candidates", 2)
        check_int(self.seeds, "seeds", 2)
        if not self.thresholds:
            raise ValueError("thresholds: MOPO needs at least one threshold")


@dataclass
class ComparisonResult:
    """points: one row per policy and seed (method, parameter, seed, labels, V0.., stderr0..,
    score0.., kl); summary: :func:`summarise`; hypervolume: per method, of its rows' seed means;
    reference_point (K,): the hypervolume's; objectives: the task's names."""

    points: pd.DataFrame
    summary: pd.DataFrame
    hypervolume: pd.Series
    reference_point: np.ndarray
    objectives: tuple[str, ...]


def run_comparison(setup: TextTaskSetup, settings: ComparisonSettings, store: RunStore | None = None,
                   progress=None) -> ComparisonResult:
    """Train every method with every seed and evaluate it (see the module doc). The setup's
    ``train_pairs`` and ``soft_labels`` are set here (the label budget, soft labels).
    ``ValueError`` for bad settings (before anything is built) and too few held-out prompts."""
    settings.validate()
    setup = replace(setup, train_pairs=settings.label_budget, soft_labels=True)
    task, tokenizer, reference, (train, validation, test) = build_text_task(setup)
    held_out = validation.prompts() + test.prompts()
    if len(held_out) < settings.eval_prompts:
        raise ValueError(f"eval_prompts: the setup holds out {len(held_out)} prompts (n_prompts={setup.n_prompts}), "
                         f"asked for {settings.eval_prompts}; raise n_prompts")
    prompts = held_out[:settings.eval_prompts]
    fitter = _Fitter(task, reference, tokenizer, train, store)
    jobs = [(seed, *job) for seed in range(settings.seeds) for job in _jobs(settings, fitter, seed)]
    rows = []
    for seed, method, parameter, make in (progress(jobs) if progress else jobs):
        policy, labels = make()
        ev = evaluate_on_task(task, policy, reference, tokenizer, prompts, setup)
        rows.append({"method": method, "parameter": parameter, "seed": seed, "labels": labels,
                     **{f"V{k}": v for k, v in enumerate(ev.win_rates)},
                     **{f"stderr{k}": s for k, s in enumerate(ev.win_rate_stderr)},
                     **{f"score{k}": s for k, s in enumerate(ev.mean_scores)},
                     "kl": sampled_kl(policy, reference, tokenizer, prompts, setup.eval_samples, setup.seed)})
    points = pd.DataFrame(rows)
    summary = summarise(points)
    means = summary[[f"V{k}" for k in range(len(task.objectives))]].to_numpy()
    reference_point = means.min(axis=0) - 0.01
    volumes = pd.Series({m: hypervolume(means[(summary.method == m).to_numpy()], reference_point)
                         for m in summary.method.unique()}, name="hypervolume of the seed means")
    if store is not None:
        _record(store, points, task.objectives, reference_point, setup, settings)
    return ComparisonResult(points, summary, volumes, reference_point, task.objectives)


def sampled_kl(policy, reference, tokenizer, prompts: list[str], n_samples: int, seed: int,
               max_new_tokens: int = 16) -> float:
    """KL(policy || reference) in nats per response: the exact per-token KL summed over each of
    ``n_samples`` responses sampled from ``policy`` (temperature 1, ``seed``) per prompt, averaged;
    both models in eval mode."""
    responses, finished = sample(policy, tokenizer, prompts, n_samples, max_new_tokens, 1.0, seed,
                                 return_finished=True)
    repeated = [p for p in prompts for _ in range(n_samples)]
    device = next(policy.parameters()).device
    batch = [t.to(device) for t in encode_rows(tokenizer, repeated, responses, finished)]
    modes = [(m, m.training) for m in (policy, reference)]
    for model, _ in modes:
        model.eval()
    try:
        return float(policy_reference_scores(policy, reference, *batch)[2].double().mean())
    finally:
        for model, training in modes:
            model.train(training)


class _Fitter:
    """Trains policies from the shared reference, returning each with the oracle-labelled
    comparisons it consumed; the two DPO experts (primary, secondary) are trained once per seed and
    shared by DPO, MODPO's margin and Rewarded Soups."""

    def __init__(self, task, reference, tokenizer, train, store):
        self.task, self.reference, self.tokenizer, self.train, self.store = task, reference, tokenizer, train, store
        self._experts: dict[tuple[str, int], torch.nn.Module] = {}

    def fit(self, config: TrainConfig, **extras) -> tuple[torch.nn.Module, int]:
        """(policy, labels): online, the oracle calls its trainer made; offline, the training pairs."""
        policy = copy.deepcopy(self.reference)
        oracle = _CountingOracle(task_oracle(self.task)) if config.online else None
        Trainer(policy, self.tokenizer, self.train, config, store=self.store,
                run_config={"task": "text", "experiment": "comparison"},
                **({"oracle": oracle} if oracle else {}), **extras).train()
        return policy, oracle.calls if oracle else len(self.train)

    def expert(self, which: str, config: TrainConfig) -> torch.nn.Module:
        key = (which, config.seed)
        if key not in self._experts:
            if which == "primary":
                self._experts[key], _ = self.fit(config)
            else:
                (self._experts[key],) = secondary_experts(config, self.reference, self.tokenizer, self.train,
                                                          self.store)
        return self._experts[key]


class _CountingOracle:
    """The task's oracle, counting its calls (one call: one comparison, labelled on every objective)."""

    def __init__(self, oracle):
        self.oracle, self.calls = oracle, 0

    def __call__(self, prompt, a, b):
        self.calls += 1
        return self.oracle(prompt, a, b)


def _jobs(s: ComparisonSettings, fitter: _Fitter, seed: int):
    """(method, parameter, make() -> (policy, labels)) for every policy of the comparison at ``seed``."""
    base = dict(tau=s.tau, steps=s.steps, batch_size=s.batch_size, lr=s.lr, seed=seed)
    dpo = TrainConfig(method="dpo", **base)
    labels = len(fitter.train)  # the experts' pairs: the training set's
    jobs = [("mopo", f"b={b}", lambda b=b: fitter.fit(TrainConfig(method="mopo", thresholds=(b,), **base)))
            for b in s.thresholds]
    jobs += [("mopo_online", f"b={b}", lambda b=b: fitter.fit(
        TrainConfig(method="mopo", thresholds=(b,), online=True, n_candidates=s.n_candidates, **base)))
        for b in s.thresholds]
    jobs.append(("dpo", "primary", lambda: (fitter.expert("primary", dpo), labels)))

    def modpo(c):
        rewards = implicit_rewards([fitter.expert("secondary", dpo)], fitter.reference, fitter.tokenizer, s.tau)
        return fitter.fit(TrainConfig(method="modpo", objective_weights=(1 - c, c), **base), secondary_rewards=rewards)

    jobs += [("modpo", f"w={c}", lambda c=c: modpo(c)) for c in s.secondary_weights]
    jobs += [("weighted_dpo", f"w={c}", lambda c=c: fitter.fit(
        TrainConfig(method="weighted_dpo", objective_weights=(1 - c, c), **base))) for c in s.secondary_weights]
    jobs += [("rewarded_soups", f"a={a:.2f}", lambda a=a: (soup(
        [fitter.expert("primary", dpo), fitter.expert("secondary", dpo)], [1 - a, a]), labels))
        for a in np.linspace(0, 1, s.soup_points)]
    return jobs


def ci_dominates(a_mean, a_half, b_mean, b_half) -> bool:
    """Whether point A dominates point B beyond its intervals (every objective maximised; (K,)
    means and interval half-widths each): on every objective A's lower bound ``a_mean - a_half``
    is at least B's upper bound ``b_mean + b_half``, and on at least one strictly above it (the
    intervals separate). Intervals that overlap on any objective: no dominance; a NaN: none."""
    low = np.asarray(a_mean, dtype=float) - np.asarray(a_half, dtype=float)
    high = np.asarray(b_mean, dtype=float) + np.asarray(b_half, dtype=float)
    return bool(np.all(low >= high) and np.any(low > high))


def summarise(points: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per (method, parameter), in the points' order: seeds, labels (the same for every
    seed, else ``ValueError``), and for each of V0.., kl and (MOPO) slack = V1 - b the mean over
    seeds with ``<column>_ci``, its interval's half-width at ``confidence``; constraint (MOPO):
    tight / met / violated ("" for the others); dominates / dominated_by: rows of other methods that this row
    dominates / that dominate it (:func:`ci_dominates` on the objectives)."""
    objectives = [c for c in points.columns if c.startswith("V") and c[1:].isdigit()]
    rows = []
    for (method, parameter), group in points.groupby(["method", "parameter"], sort=False):
        if group["labels"].nunique() != 1:
            raise ValueError(f"labels: {method} {parameter} consumed {sorted(set(group['labels']))} across seeds")
        row = {"method": method, "parameter": parameter, "seeds": len(group), "labels": int(group["labels"].iloc[0])}
        for column in (*objectives, "kl"):
            row[column], row[f"{column}_ci"], _ = mean_ci(group[column], confidence)
        if method in MOPO_METHODS:
            b = float(parameter.removeprefix("b="))
            row["slack"], row["slack_ci"], _ = mean_ci(group["V1"] - b, confidence)
            low, high = row["slack"] - row["slack_ci"], row["slack"] + row["slack_ci"]
            row["constraint"] = "tight" if low <= 0 <= high else "met" if low > 0 else "violated"
        rows.append(row)
    table = pd.DataFrame(rows)
    if "constraint" in table:
        table["constraint"] = table["constraint"].fillna("")
    means, halves = table[objectives].to_numpy(), table[[f"{c}_ci" for c in objectives]].to_numpy()
    methods = table.method.to_numpy()
    wins = np.array([[methods[i] != methods[j] and ci_dominates(means[i], halves[i], means[j], halves[j])
                      for j in range(len(table))] for i in range(len(table))], dtype=bool)
    table["dominates"], table["dominated_by"] = wins.sum(axis=1), wins.sum(axis=0)
    return table


def markdown_table(summary: pd.DataFrame, objectives: tuple[str, ...], digits: int = 3) -> str:
    """:func:`summarise`'s table as markdown, "mean ± half-width" cells (the interval over seeds)."""
    def cell(row, column):
        mean = row.get(column, np.nan)
        return "" if pd.isna(mean) else f"{mean:.{digits}f} ± {row[f'{column}_ci']:.{digits}f}"

    rows = []
    for r in summary.to_dict("records"):
        rows.append({"method": r["method"], "parameter": r["parameter"], "seeds": r["seeds"], "labels": r["labels"],
                     **{f"{name} (V{k})": cell(r, f"V{k}") for k, name in enumerate(objectives)},
                     "V1 - b": cell(r, "slack"), "constraint": r.get("constraint", ""),
                     "KL (nats/response)": cell(r, "kl"),
                     "dominates": r["dominates"], "dominated by": r["dominated_by"]})
    return pd.DataFrame(rows).to_markdown(index=False)


def _record(store: RunStore, points: pd.DataFrame, objectives, reference_point, setup, settings) -> None:
    """One "comparison" run with a point per policy and seed."""
    k = len(objectives)
    run_id = store.create_run("comparison", {"task": "text", "objectives": list(objectives),
                                             "reference_point": reference_point.tolist(), "setup": asdict(setup),
                                             "settings": asdict(settings), "label_budget": settings.label_budget},
                              name="text task: MOPO vs baselines")
    store.add_points(run_id, [{"label": r["method"], "params": {"parameter": r["parameter"], "seed": int(r["seed"])},
                               "values": [r[f"V{i}"] for i in range(k)],
                               "extra": {"stderr": [r[f"stderr{i}"] for i in range(k)], "kl": r["kl"],
                                         "labels": int(r["labels"])}}
                              for r in points.to_dict("records")])
    store.set_status(run_id, "finished")
