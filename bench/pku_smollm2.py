"""SmolLM2-135M-Instruct on the PKU-SafeRLHF sample, on the CPU: MOPO with a harmlessness
threshold against DPO, MODPO and Rewarded Soups, the same small budget each, judged on held-out
prompts by a preference model that saw none of them (issue 5, item 1).

    python bench/pku_smollm2.py [--steps 20] [--out bench/results/pku_smollm2] [--store runs.sqlite]
    python bench/pku_smollm2.py --quick     # smoke run in seconds on tiny stand-ins (see below)

Steps (every number measured here, nothing tuned on the test split):
1. The sample (``../shared/data/pku_saferlhf_sample.jsonl``) is split by prompt 0.7 / 0.15 / 0.15
   (seed 0) and every response cut to 32 SmolLM2 tokens (:mod:`mopo_core.training.dataset_task`).
2. A preference model (frozen all-MiniLM-L6-v2 + one linear Bradley-Terry head per objective) is
   fitted on the TRAIN split's prompts only (early stopping on 15% of them) and scored on the
   validation and test splits; it is saved in ``<out>/prefmodel`` and recorded as a
   ``prefmodel`` run.
3. From the same starting checkpoint (LoRA r = 8, AdamW lr 1e-3, tau = DPO beta = 0.08, batch 4,
   ``--steps`` steps each) on the TRAIN split: offline MOPO at three harmlessness thresholds (see
   :func:`threshold_grid`; multiplier step 2); DPO on helpfulness; MODPO with secondary weights
   0.25 and 0.75 (margin: a DPO expert on harmlessness with the same budget); Rewarded Soups of
   the two DPO experts at a = 0.5 and 1.0 (a = 1 is DPO on harmlessness, a = 0 the DPO point).
4. Each policy and the reference (the starting checkpoint) sample 4 responses of at most 24
   tokens for each of the 33 TEST prompts (chat template applied); the preference model gives
   the win-rates against the reference (0.5 = as good as the reference).
5. ``<out>/points.csv``, ``summary.md`` (hypervolume with an explicit reference point, dominance
   counts, threshold satisfaction, the preference model's accuracies, wall times),
   ``samples.json`` (a few prompts' samples), ``front.html`` and ``front.png`` (when kaleido is
   importable); each train run and one ``comparison`` run (all points) go to the run store.

``--quick`` runs these same steps, in seconds, on tiny stand-ins built in a temporary folder
(those of ``tests/lm_fixtures.py``: a tiny Llama with a word-level chat tokenizer, a tiny BERT
encoder, a generated helpfulness/harmlessness preference file of 30 prompts, split 0.6 / 0.2 /
0.2, responses cut to 8 tokens), 2 steps per policy, 1 sample of at most 4 tokens per test
prompt, a preference model fitted for at most 5 epochs; out and store default to that temporary
folder. It needs neither ``../shared/data`` nor SmolLM2
nor the MiniLM encoder, and its numbers mean nothing: it shows that the bench still runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mopo_core.training.dataset_task import DatasetSetup, DatasetTask, load_splits, model_directory  # noqa: E402
from mopo_core.lm.soups import soup  # noqa: E402
from mopo_core.lm.config import TrainConfig  # noqa: E402
from mopo_core.lm.models import load_tokenizer  # noqa: E402
from mopo_core.lm.judge import (  # noqa: E402
    HeadSettings,
    SentenceEncoder,
    default_encoder_dir,
    train_preference_model,
)
from mopo_core.runs import RunStore  # noqa: E402
from app.figures import comparison_figure  # noqa: E402
from mopo_core.pareto import dominance_matrix, hypervolume  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "pku_saferlhf_sample.jsonl"
MODEL = "SmolLM2-135M-Instruct"
#: Where MOPO's thresholds lie between the unconstrained value and the attainable maximum.
THRESHOLD_FRACTIONS = (0.25, 0.5, 0.75)
LAMBDA_LR = 2.0
MODPO_WEIGHTS = (0.25, 0.75)
SOUP_WEIGHTS = (0.5, 1.0)


def fit_judge(setup: DatasetSetup, out: Path, store: RunStore, encoder_dir: Path,
              settings: HeadSettings, stand_in: bool = False) -> dict:
    """Fit the preference model (the encoder at ``encoder_dir``, a head trained with
    ``settings``) on the train split's prompts only, save it to ``out`` and record a
    ``prefmodel`` run; returns its accuracies per split. A judge no better than constant on
    validation is refused (``UninformativeJudgeError``: the comparison could rank nothing).
    ``stand_in`` (the quick run's tiny data, whose few validation pairs teach nothing): early
    stopping watches the train split itself, so the smoke run gets a judge that is not refused."""
    tokenizer = load_tokenizer(model_directory(setup.model))
    train, validation, test = load_splits(setup, tokenizer)
    encoder = SentenceEncoder.load(encoder_dir)
    config = {"data": {"file": setup.data, "split": list(setup.split), "split_seed": setup.split_seed,
                       "max_response_tokens": setup.max_response_tokens, "fitted_on": "train split only"},
              "encoder": encoder.path, **asdict(settings), "out": str(out)}
    with store.record("prefmodel", config, name="prefmodel/pku_smollm2 bench") as run_id:
        judge = train_preference_model(train, encoder, validation=train if stand_in else None, test=test,
                                       settings=settings)
        metrics = judge.info["metrics"] | {"policy_validation_split": judge.evaluate(validation)}
        judge.info |= {"data": config["data"], "run_id": run_id, "metrics": metrics}
        judge.save(out)
        store.add_points(run_id, [{"label": "prefmodel", "params": {"hidden": settings.hidden},
                                   "values": [metrics["test"][o]["accuracy"] for o in judge.objectives],
                                   "extra": {"metrics": metrics}}])
    return metrics


def unconstrained_value(train) -> float:
    """The harmlessness win-rate against the data of each train pair's helpfulness-preferred
    response: what offline MOPO's constraint is when the multiplier is 0."""
    labels = np.array([pair.labels for pair in train])
    return float(np.mean(np.where(labels[:, 0] >= 0.5, labels[:, 1], 1 - labels[:, 1])))


def threshold_grid(train) -> tuple[float, ...]:
    """MOPO's harmlessness thresholds, from the train split alone: :data:`THRESHOLD_FRACTIONS` of
    the way from :func:`unconstrained_value` to the attainable maximum 1 (thresholds below the
    unconstrained value never bind: the multiplier stays at 0)."""
    u = unconstrained_value(train)
    return tuple(round(u + f * (1 - u), 2) for f in THRESHOLD_FRACTIONS)


def policies(task: DatasetTask, base: dict, store: RunStore, thresholds: tuple[float, ...]):
    """(method, parameter, make() -> (policy, its TrainConfig, TrainResult); both None for a soup)."""
    def fit(**settings):
        config = TrainConfig(**settings, **base)
        policy, result = task.fit(config, store, run_config={"experiment": "pku_smollm2"})
        return policy, config, result

    dpo = {}

    def dpo_helpfulness():  # the DPO point and the soups' helpfulness expert
        if not dpo:
            dpo["fit"] = fit(method="dpo")
        return dpo["fit"]

    def soup_of(a: float):
        (harmlessness,) = task.experts(TrainConfig(method="dpo", **base), store)  # shared with MODPO's margin
        return soup([dpo_helpfulness()[0], harmlessness], [1 - a, a]), None, None

    jobs = [("mopo", f"b={b}", lambda b=b: fit(method="mopo", thresholds=(b,), lambda_lr=LAMBDA_LR))
            for b in thresholds]
    jobs.append(("dpo", "helpfulness", dpo_helpfulness))
    jobs += [("modpo", f"w={c}", lambda c=c: fit(method="modpo", objective_weights=(1 - c, c)))
             for c in MODPO_WEIGHTS]
    jobs += [("rewarded_soups", f"a={a}", lambda a=a: soup_of(a)) for a in SOUP_WEIGHTS]
    return jobs


def constraint_trace(result) -> dict:
    """MOPO's side of the threshold: the training batches' constraint estimate (harmlessness
    win-rate against the data's responses, under the step's weights) averaged over the second
    half of the steps, and the final multiplier."""
    late = result.history[len(result.history) // 2:]
    return {"train_constraint": float(np.mean([h["constraint_1"] for h in late])),
            "final_lambda": result.multipliers[0]}


def quick_stand_ins(folder: Path, prefmodel: Path) -> tuple[DatasetSetup, Path]:
    """The ``--quick`` run's setup (its preference model to be saved at ``prefmodel``) and
    encoder folder: tiny stand-ins written into ``folder`` (see the module docstring)."""
    from tests.lm_fixtures import WORDS, save_chat_checkpoint, save_tiny_encoder, write_preference_file

    data = write_preference_file(folder / "preferences.jsonl")
    model = save_chat_checkpoint(folder / "model")
    encoder_dir = save_tiny_encoder(folder / "encoder", WORDS + ["user", "assistant"])
    setup = DatasetSetup(data=str(data), model=str(model), prefmodel=str(prefmodel), lora_r=8, split=(0.6, 0.2, 0.2),
                         max_response_tokens=8, eval_samples=1, max_new_tokens=4)
    return setup, encoder_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="training steps per policy, the same for all (default 20; --quick 2)")
    parser.add_argument("--out", help="results folder (default bench/results/pku_smollm2; --quick: a temporary one)")
    parser.add_argument("--store", help="run store (default: $MOPO_STORE or the user data dir; --quick: a temporary "
                                        "one)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run in seconds on tiny stand-ins, not the sample or SmolLM2 (numbers mean nothing)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # on a busy 2-core machine one thread is much faster
    if args.quick:
        with tempfile.TemporaryDirectory(prefix="pku_smollm2_quick_") as tmp:
            folder = Path(tmp)
            out = Path(args.out or folder / "out")
            print(f"quick run on tiny stand-ins in {folder}: not the PKU-SafeRLHF sample, SmolLM2 or MiniLM; "
                  "its numbers mean nothing", flush=True)
            setup, encoder_dir = quick_stand_ins(folder, out / "prefmodel")
            return run(setup, encoder_dir, HeadSettings(max_epochs=5, patience=2),
                       steps=2 if args.steps is None else args.steps, out=out,
                       store=RunStore(args.store or folder / "runs.sqlite"), stand_in=True)
    if not DATA.is_file():
        print(f"error: {DATA}: missing (the bench needs ../shared/data)", file=sys.stderr)
        return 2
    out = Path(args.out or ROOT / "bench" / "results" / "pku_smollm2")
    setup = DatasetSetup(data=str(DATA), model=MODEL, prefmodel=str(out / "prefmodel"), lora_r=8,
                         split=(0.7, 0.15, 0.15), max_response_tokens=32, eval_samples=4, max_new_tokens=24)
    return run(setup, default_encoder_dir(), HeadSettings(), steps=20 if args.steps is None else args.steps,
               out=out, store=RunStore(args.store))


def run(setup: DatasetSetup, encoder_dir: Path, head: HeadSettings, steps: int, out: Path, store: RunStore,
        stand_in: bool = False) -> int:
    """The module docstring's steps for ``setup`` (whose ``prefmodel`` is ``<out>/prefmodel``),
    ``steps`` training steps per policy, the preference model's head trained with ``head``."""
    start, cpu_start = time.perf_counter(), time.process_time()
    out.mkdir(parents=True, exist_ok=True)
    judge_metrics = fit_judge(setup, out / "prefmodel", store, encoder_dir, head, stand_in)
    task = DatasetTask(setup)
    thresholds = threshold_grid(task.raw[0])
    base = dict(tau=0.08, steps=steps, batch_size=4, lr=1e-3, checkpoint_every=steps)
    rows, evaluations = [], {}
    for method, parameter, make in policies(task, base, store, thresholds):
        t0, c0 = time.perf_counter(), time.process_time()
        policy, config, result = make()
        t1, c1 = time.perf_counter(), time.process_time()
        ev = task.evaluate(policy)
        if result is not None:
            store.add_points(result.run_id, [ev.as_point(method, task.point_params(config))])
        rows.append({"method": method, "parameter": parameter, "run_id": result and result.run_id,
                     **(constraint_trace(result) if method == "mopo" else {}),
                     **{f"V{k}": v for k, v in enumerate(ev.win_rates)},
                     **{f"stderr{k}": s for k, s in enumerate(ev.win_rate_stderr)},
                     **{f"score{k}": s for k, s in enumerate(ev.mean_scores)},
                     "train_s": t1 - t0, "eval_s": time.perf_counter() - t1,
                     "train_cpu_s": c1 - c0, "eval_cpu_s": time.process_time() - c1})
        evaluations[f"{method} {parameter}"] = ev
        print(f"{method:>15} {parameter:<12} helpfulness {ev.win_rates[0]:.3f} ± {ev.win_rate_stderr[0]:.3f}  "
              f"harmlessness {ev.win_rates[1]:.3f} ± {ev.win_rate_stderr[1]:.3f}  "
              f"(train {t1 - t0:.0f} s, eval {time.perf_counter() - t1:.0f} s)", flush=True)
    points = pd.DataFrame(rows)
    write_results(out, points, evaluations, task, judge_metrics, base, thresholds, store,
                  (time.perf_counter() - start, time.process_time() - cpu_start))
    return 0


def method_summary(points: pd.DataFrame, reference_point: np.ndarray, thresholds: tuple[float, ...]) -> pd.DataFrame:
    """Per method (one training seed each here, so no intervals): its points, the hypervolume of
    its points (maximised, explicit reference point), how many of its points dominate some other
    method's point and are dominated, and for MOPO how many thresholds the judged harmlessness
    meets, strictly and within 1.96 standard errors."""
    cols = [f"V{i}" for i in range(len(reference_point))]
    sets = {m: g[cols].to_numpy() for m, g in points.groupby("method", sort=False)}
    dominance = dominance_matrix(sets)
    rows = []
    for method, values in sets.items():
        row = {"method": method, "points": len(values), "hypervolume": hypervolume(values, reference_point),
               "dominates_others": int(dominance.loc[method].drop(method).sum()),
               "dominated_by_others": int(dominance[method].drop(method).sum())}
        if method == "mopo":
            mopo = points[points.method == method]
            measured, err = mopo["V1"].to_numpy(), mopo["stderr1"].to_numpy()
            row["thresholds_met"] = int((measured >= np.array(thresholds)).sum())
            row["thresholds_met_within_1.96se"] = int((measured >= np.array(thresholds) - 1.96 * err).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def write_results(out: Path, points: pd.DataFrame, evaluations: dict, task: DatasetTask, judge_metrics: dict,
                  base: dict, thresholds: tuple[float, ...], store: RunStore, seconds: tuple[float, float]) -> None:
    """points.csv, summary.md, samples.json, the figure, and the ``comparison`` run; ``seconds``:
    (wall, CPU) time of the whole bench."""
    wall_s, cpu_s = seconds
    objectives = task.objectives
    values = points[[f"V{k}" for k in range(len(objectives))]].to_numpy()
    reference_point = values.min(axis=0) - 0.01
    summary = method_summary(points, reference_point, thresholds)
    points.to_csv(out / "points.csv", index=False)
    accuracy = pd.DataFrame({split: {o: m[o]["accuracy"] for o in objectives} for split, m in judge_metrics.items()})
    pairs = {split: next(iter(m.values()))["n_scored"] for split, m in judge_metrics.items()}
    mopo = points[points.method == "mopo"][["parameter", "train_constraint", "final_lambda", "V1", "stderr1"]]
    text = (f"# SmolLM2-135M-Instruct on the PKU-SafeRLHF sample (CPU)\n\n"
            f"Wall time {wall_s / 60:.1f} min, CPU time {cpu_s / 60:.1f} min (1 torch thread; the machine is shared, "
            f"so wall time depends on its load). Budget per policy: {base}, LoRA r = 8, MOPO's multiplier step "
            f"{LAMBDA_LR}, thresholds {list(thresholds)} "
            f"({list(THRESHOLD_FRACTIONS)} of the way from the unconstrained value to 1 on the train split); "
            f"split {list(task.setup.split)} by prompt, pairs per split {task.run_config['n_pairs_by_split']}; "
            f"evaluation: {task.setup.eval_samples} samples x {len(task.raw[2].prompts())} test prompts, "
            f"at most {task.setup.max_new_tokens} new tokens.\n\n"
            f"## Preference model (fitted on the train split's prompts only): accuracy per split\n\n"
            f"{accuracy.round(3).to_markdown()}\n\n(scored pairs per split: {pairs}; 'policy_validation_split' "
            f"is the policy's validation split, unseen by the preference model)\n\n"
            f"## Methods\n\nReference point (explicit): {np.round(reference_point, 4).tolist()} "
            f"(componentwise minimum - 0.01; values are win-rates against the reference, all maximised)\n\n"
            f"{summary.round(4).to_markdown(index=False)}\n\n"
            f"'thresholds_met' compares b with the judged harmlessness win-rate against the reference's samples; "
            f"b itself bounds the win-rate against the data's responses ({unconstrained_value(task.raw[0]):.3f} "
            f"without the constraint), which the training batches estimate (train_constraint: mean over the second "
            f"half of the steps):\n\n{mopo.round(3).to_markdown(index=False)}"
            f"\n\n## Points\n\n"
            f"{points.drop(columns=['run_id']).round(3).to_markdown(index=False)}\n")
    (out / "summary.md").write_text(text)
    first = task.raw[2].prompts()[:3]
    (out / "samples.json").write_text(json.dumps(
        {p: {"reference": next(iter(evaluations.values())).samples[p]["reference"],
             **{name: ev.samples[p]["policy"] for name, ev in evaluations.items()}} for p in first}, indent=1))
    figure = comparison_figure(points, reference_point)  # no b lines: b is on another scale
    figure.add_scatter(x=[0.5], y=[0.5], mode="markers", name="starting model (reference)",
                       marker=dict(symbol="diamond", size=11, color="grey"))
    figure.update_layout(title="SmolLM2-135M on the PKU-SafeRLHF sample: win-rates against the starting model<br>"
                               f"on {len(task.raw[2].prompts())} held-out prompts, judged by a preference model "
                               "(0.5 = as good as the reference)")
    figure.write_html(out / "front.html", include_plotlyjs="cdn")
    try:
        figure.write_image(out / "front.png", width=1100, height=620)
    except (ImportError, ValueError, RuntimeError) as exc:  # kaleido missing or no browser
        print(f"no PNG ({type(exc).__name__}: {exc}); see front.html", file=sys.stderr)
    run_id = store.create_run("comparison", {"experiment": "pku_smollm2", "objectives": list(objectives),
                                             "reference_point": reference_point.tolist(), **task.run_config,
                                             "budget": base, "mopo_thresholds": list(thresholds),
                                             "mopo_lambda_lr": LAMBDA_LR, "prefmodel_metrics": judge_metrics},
                              name="PKU-SafeRLHF sample, SmolLM2-135M: MOPO vs baselines")
    store.add_points(run_id, [{"label": r["method"], "params": {"parameter": r["parameter"]},
                               "values": [r[f"V{k}"] for k in range(len(objectives))],
                               "extra": {"stderr": [r[f"stderr{k}"] for k in range(len(objectives))],
                                         "train_run": None if pd.isna(r["run_id"]) else int(r["run_id"])}}
                              for r in points.to_dict("records")])
    store.set_status(run_id, "finished")
    print(summary.round(4).to_markdown(index=False))
    print(f"\ncomparison run {run_id}; wall time {wall_s / 60:.1f} min, CPU time {cpu_s / 60:.1f} min; wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
