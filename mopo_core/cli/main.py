"""Command line: ``python -m mopo_core {solve,sweep,suite,train,evaluate,compare-text,runs,data,
models,prefmodel,preview} ...``. Commands that compute something record a run in the run store
(``--store`` or $MOPO_STORE); ``runs`` reads it (``runs import`` records points from a file);
``data``, ``models`` and ``preview`` do not touch it.

Bad input (a ``ValueError``, ``KeyError`` or ``OSError``: a file, argument, row or field that
is wrong, a run that does not exist, a file that cannot be read) prints ``error: <message>`` on
one line of stderr, naming what is wrong, and exits with status 2; anything else is a bug and
keeps its traceback."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from synthetic import STRUCTURES, make_structure

from mopo_core.cli.models import add_models_command, add_prefmodel_command, cmd_models, cmd_prefmodel
from mopo_core.pareto import attainable_max
from mopo_core.data.public_formats import FORMATS, format_report, load_public
from mopo_core.data.preview import PREVIEW_FORMATS, format_preview, threshold_preview
from mopo_core.runs import RunStore
from mopo_core.experiments.imports import import_points
from mopo_core.experiments.suite import (
    METHODS,
    TEMPERATURES,
    SuiteConfig,
    config_dict,
    dominance_totals,
    markdown_report,
    results_table,
    run_suite,
)
from mopo_core.tabular.solver import TabularProblem, policy_values
from mopo_core.lm.config import METHODS as TRAIN_METHODS  # (METHODS above: the suite's tabular methods)
from mopo_core.validation import as_finite_array, read_preference_file


def _instance(args) -> tuple[TabularProblem, dict]:
    """The problem to solve (a structure or a file) and its config for the run store."""
    if args.preferences:
        array = read_preference_file(args.preferences)
        try:
            problem = TabularProblem.build(array)
        except ValueError as exc:
            raise ValueError(f"{args.preferences}: {exc}") from None
        return problem, {"preferences_file": str(Path(args.preferences).resolve())}
    s = make_structure(args.structure, n_responses=args.n_responses, n_prompts=args.n_prompts, seed=args.seed)
    problem = TabularProblem.build(s.preferences, s.reference, s.behaviour, s.prompt_weights)
    config = {"structure": args.structure, "n_responses": args.n_responses, "n_prompts": args.n_prompts,
              "seed": args.seed}
    return problem, config


def _point(sol, label: str) -> dict:
    return {"label": label, "params": {"threshold": sol.thresholds, "tau": sol.tau, "eps": sol.eps},
            "values": sol.values, "extra": sol.to_dict()}


def cmd_solve(args, store: RunStore) -> int:
    problem, config = _instance(args)
    as_finite_array(args.threshold, "--threshold")  # named here, before the run store sees it
    config.update(thresholds=args.threshold, tau=args.tau, eps=args.eps, method=args.method)
    with store.record("solve", config) as run_id:
        sol = problem.solve(args.threshold, args.tau, args.eps, method=args.method)
        store.add_points(run_id, [_point(sol, "mopo")])
    if args.json:
        print(json.dumps({"run_id": run_id, **sol.to_dict()}))
        return 0
    print(f"run {run_id}  feasible={sol.feasible}  converged={sol.converged} ({sol.iterations} iterations)")
    print(f"values V_k       : {np.round(sol.values, 6).tolist()}  (objective 0 is the primary)")
    print(f"thresholds       : {[round(float(b), 6) for b in sol.thresholds]}")  # np.round overflows at 1e308
    print(f"multipliers      : {np.round(sol.multipliers, 6).tolist()}")
    print(f"max attainable   : {np.round(sol.max_attainable, 6).tolist()}")
    if sol.robust_values is not None:
        print(f"robust values    : {np.round(sol.robust_values, 6).tolist()}  chi: {np.round(sol.chi, 6).tolist()}")
    print(f"KL to reference  : {sol.kl:.6g}")
    print(f"policy           : {np.round(sol.policy, 4).tolist()}")
    return 0


def _sweep_grid(args, problem: TabularProblem) -> np.ndarray:
    if args.thresholds:
        return np.array([float(x) for x in args.thresholds.split(",")])
    if problem.rates.shape[0] != 2:
        raise ValueError("--thresholds: give an explicit comma-separated list for K != 2 (or use solve)")
    start = policy_values(problem.reference, problem.rates, problem.prompt_weights)[1]
    stop = attainable_max(problem.rates, problem.prompt_weights)[1]
    return np.linspace(start, start + 0.99 * (stop - start), args.n_thresholds)


def cmd_sweep(args, store: RunStore) -> int:
    from tqdm import tqdm

    problem, config = _instance(args)
    grid = _sweep_grid(args, problem)
    config.update(thresholds=grid, tau=args.tau, eps=args.eps)
    with store.record("sweep", config) as run_id:
        sweep = problem.sweep(grid, args.tau, args.eps, progress=lambda xs: tqdm(xs, desc="sweep", disable=args.json))
        rows = [{"threshold": float(b[0]), "feasible": bool(f), "multiplier": float(lam[0]),
                 **{f"V{k}": float(v) for k, v in enumerate(values)}}
                for b, f, lam, values in zip(sweep.thresholds, sweep.feasible, sweep.multipliers, sweep.values)]
        store.add_points(run_id, [
            {"label": "mopo", "params": {"threshold": b, "tau": args.tau, "eps": args.eps}, "values": values,
             "extra": {"feasible": bool(f), "multipliers": lam, "kl": kl, "policy": policy}}
            for b, f, lam, values, kl, policy in zip(sweep.thresholds, sweep.feasible, sweep.multipliers,
                                                     sweep.values, sweep.kl, sweep.policies)
        ])
    if args.json:
        print(json.dumps({"run_id": run_id, "points": rows}))
    else:
        import pandas as pd

        print(f"run {run_id}: {len(rows)} thresholds")
        print(pd.DataFrame(rows).round(6).to_string(index=False))
    return 0


def cmd_suite(args, store: RunStore) -> int:
    import time

    from tqdm import tqdm

    config = replace(
        SuiteConfig(),
        n_responses=args.n_responses,
        n_comparisons=None if args.exact else args.n_comparisons,
        tau=args.tau,
        seed=args.seed,
        n_seeds=args.n_seeds,
        steps=args.steps,
        **({"structures": tuple(args.structures)} if args.structures else {}),
        **({"methods": tuple(args.methods)} if args.methods else {}),
        **({"temperatures": tuple(args.temperatures)} if args.temperatures else {}),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = run_suite(config, progress=lambda xs: tqdm(xs, desc="suite"))
    elapsed = time.perf_counter() - start
    table = results_table(results)
    run_ids = [_record_structure(store, config, r) for r in results]
    table.to_csv(out / "suite.csv", index=False)
    report = markdown_report(table, config)
    (out / "suite.md").write_text(report)
    dominance = {name: frame.to_dict() for name, frame in dominance_totals(results).items()}
    (out / "dominance.json").write_text(json.dumps(dominance, indent=1))
    print(report)
    print(f"\n{len(results)} (structure, seed) cases in {elapsed:.0f} s; runs {run_ids[0]}..{run_ids[-1]} "
          f"(one per structure and seed); wrote {out / 'suite.csv'}, {out / 'suite.md'}, {out / 'dominance.json'}")
    return 0


def _record_structure(store: RunStore, config: SuiteConfig, result) -> int:
    """One run per structure and seed (objective counts differ between structures; seeds group as seeds
    of one experiment on the Compare page): each series' answers, its metrics."""
    with store.record("suite", {**config_dict(config), "seed": result.seed, "structure": result.structure},
                      name=f"suite/{result.structure}/seed {result.seed}") as run_id:
        store.add_points(run_id, [
            {"label": label, "params": params, "values": values}
            for label in result.points
            for values, params in zip(result.points[label], result.parameters[label])
        ])
        store.log_metrics(run_id, 0, {f"{label}/{k}": result.metrics[label][k] for label in result.metrics
                                      for k in ("hv_ratio", "igd_plus", "satisfaction", "mean_regret", "mean_kl")})
    return run_id


def cmd_runs(args, store: RunStore) -> int:
    if args.action == "list":
        print(store.list_runs().to_string(index=False))
    elif args.action == "show":
        run = store.get_run(args.run_id)
        print(json.dumps({"id": run.id, "kind": run.kind, "status": run.status, "error": run.error,
                          "config": run.config}, indent=1))
        print(run.points.drop(columns=["extra"], errors="ignore").to_string(index=False))
    elif args.action == "mark-interrupted":
        for run_id in args.run_ids:  # a killed process cannot update its own status
            status = store.get_status(run_id)
            if status != "running":
                raise ValueError(f"run {run_id}: status is {status!r}; only 'running' runs can be marked interrupted")
            store.set_status(run_id, "interrupted", "marked interrupted from the command line (process gone)")
            print(f"run {run_id}: interrupted")
    elif args.action == "import":
        for run_id in import_points(store, args.file, name=args.name):
            print(run_id)
    else:
        for path in store.export_run(args.run_id, args.path):
            print(path)
    return 0


def _add_instance_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--structure", default="bt_conflict", choices=STRUCTURES)
    p.add_argument("--preferences", help="a .npy or .json file with a (K,N,N) or (K,M,N,N) array instead of a structure")
    p.add_argument("--n-responses", type=int, default=8)
    p.add_argument("--n-prompts", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tau", type=float, default=0.1)
    p.add_argument("--eps", type=float, default=0.0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mopo_core", description=__doc__)
    parser.add_argument("--store", help="run store SQLite file (default: $MOPO_STORE or the user data dir)")
    sub = parser.add_subparsers(dest="command", required=True)
    solve = sub.add_parser("solve", help="solve MOPO at one threshold vector")
    _add_instance_args(solve)
    solve.add_argument("--threshold", type=float, action="append", required=True,
                       help="one per secondary objective (repeat for K > 2)")
    solve.add_argument("--method", default="newton", choices=("newton", "lbfgsb", "projected_gradient"))
    sweep = sub.add_parser("sweep", help="threshold grid -> front")
    _add_instance_args(sweep)
    sweep.add_argument("--thresholds", help="comma-separated thresholds (default: a grid up to the attainable max)")
    sweep.add_argument("--n-thresholds", type=int, default=21)
    suite = sub.add_parser("suite", help="every structure x method with the SYNTHETIC.md metrics")
    suite.add_argument("--out", default="suite_results")
    suite.add_argument("--n-responses", type=int, default=8)
    suite.add_argument("--n-comparisons", type=int, default=200, help="comparisons per prompt")
    suite.add_argument("--exact", action="store_true", help="use exact preferences instead of sampled data")
    suite.add_argument("--tau", type=float, default=0.01)
    suite.add_argument("--steps", type=int, default=2000)
    suite.add_argument("--seed", type=int, default=0, help="first seed (structure and data)")
    suite.add_argument("--n-seeds", type=int, default=SuiteConfig.n_seeds, help="seeds seed..seed+n-1")
    suite.add_argument("--structures", nargs="+", choices=STRUCTURES)
    suite.add_argument("--methods", nargs="+", choices=METHODS)
    suite.add_argument("--temperatures", nargs="+", choices=TEMPERATURES,
                       help="same_tau: every method at --tau; same_kl: each baseline's tau matched to MOPO's KL "
                            "(default: both)")
    train = sub.add_parser(
        "train", help="fine-tune a tiny GPT on the synthetic text task, or a local checkpoint on a preference file "
                      "(--data), with MOPO or a baseline",
        description="Fine-tune a tiny GPT on the synthetic text task or, with --data, a local Hugging Face "
                    "checkpoint (--model) on a preference file, evaluated on its held-out test prompts by a trained "
                    "preference model (--prefmodel). SIGINT/SIGTERM end the run after the "
                    "current step (status cancelled, checkpoint kept; exit status 128 + the signal number); a "
                    "second signal stops at once (status interrupted). --resume RUN_ID continues a run from its "
                    "checkpoint with the run's stored settings (the other training options are then ignored).")
    train.add_argument("--resume", type=int, metavar="RUN_ID",
                       help="continue this run from its checkpoint (its stored settings are used)")
    train.add_argument("--task", default="text", choices=("text",))
    train.add_argument("--method", default="mopo", choices=TRAIN_METHODS)
    train.add_argument("--objective-weights", type=float, nargs="+",
                       help="weighted_dpo, modpo: one weight per objective, summing to 1")
    train.add_argument("--online", action="store_true",
                       help="MOPO online: sample candidates from the policy, score them with the task's oracles")
    train.add_argument("--n-candidates", type=int, default=8, help="online: candidates per prompt and step")
    train.add_argument("--max-new-tokens", type=int, default=16,
                       help="online, KL and (with --data) evaluation sampling: response length cap")
    train.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (same update, less memory)")
    train.add_argument("--kl-every", type=int, help="log a sampled KL(policy || reference) every this many steps")
    train.add_argument("--win-rate-prior", type=float, default=1.0,
                       help="offline MOPO: pseudo-comparisons at 1/2 added to each response's labels (0: raw labels)")
    train.add_argument("--no-kl-leash", dest="kl_leash", action="store_false",
                       help="offline MOPO: do not hold KL(policy || start) within (1 + sum lambda) / tau")
    train.add_argument("--heldout-every", type=int,
                       help="evaluate on the held-out prompts (win-rates +- SE) every this many steps")
    train.add_argument("--threshold", type=float, action="append", help="MOPO: one per secondary objective")
    train.add_argument("--tau", type=float, default=0.08)
    train.add_argument("--steps", type=int, default=200)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--lambda-lr", type=float, default=1.0)
    train.add_argument("--t0", type=int, help="lagged-reference / ratchet period in steps")
    train.add_argument("--beta", type=float, help="ratcheting factor for the thresholds (needs --t0)")
    train.add_argument("--eps", type=float, default=0.0,
                       help="MOPO: radius of the robust constraints' KL ball (default 0: off)")
    train.add_argument("--chi-lr", type=float, default=0.5, help="MOPO with --eps: step size of the robust duals")
    train.add_argument("--n-prompts", type=int, default=40)
    train.add_argument("--sft-steps", type=int, default=300, help="SFT steps for the reference model")
    train.add_argument("--checkpoint-dir", help="where the run's checkpoint is written (atomically); needed to resume")
    train.add_argument("--checkpoint-every", type=int, default=25, help="steps between checkpoints")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--json", action="store_true", help="print the final points as JSON")
    data_run = train.add_argument_group("training on a preference file (instead of the synthetic text task)")
    data_run.add_argument("--data", metavar="FILE", help="preference file: this project's schema or a public format")
    data_run.add_argument("--format", choices=("auto", "mopo", *FORMATS),
                          help="--data's format (default auto: told from the file)")
    data_run.add_argument("--objective", help="the one objective of an hh/sharegpt/alpaca file")
    data_run.add_argument("--model", metavar="NAME_OR_DIR", help="checkpoint folder or models-registry name")
    data_run.add_argument("--prefmodel", metavar="DIR",
                          help="preference model that judges the test prompts (it must not have seen them)")
    data_run.add_argument("--gradient-checkpointing", action="store_true", default=None,
                          help="recompute each layer's activations in backward (less memory, slower steps)")
    data_run.add_argument("--lora-r", type=int, metavar="R",
                          help="train LoRA adapters of rank R (default: all weights)")
    data_run.add_argument("--split", type=float, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                          help="fractions of the pairs, split by prompt with seed 0 as prefmodel train splits "
                               "(default 0.8 0.1 0.1)")
    data_run.add_argument("--max-response-tokens", type=int, help="cut responses to this many tokens (default 64)")
    data_run.add_argument("--eval-samples", type=int, help="samples per test prompt and model (default 4)")
    evaluate = sub.add_parser(
        "evaluate", help="evaluate a train run's checkpoint against its reference on held-out prompts",
        description="Rebuild the run's task and reference (seeded), load the policy from the run's checkpoint "
                    "(finished or not) and measure its win-rates against the reference's samples under the task's "
                    "oracles (a run on a preference file: under its judge, on its test prompts only). Records an "
                    "'evaluate' run with the point.")
    evaluate.add_argument("--run", type=int, required=True, metavar="RUN_ID",
                          help="a train run (text task or preference file) with a checkpoint folder")
    evaluate.add_argument("--samples", type=int, help="samples per prompt and model (default: the run's)")
    evaluate.add_argument("--split", default="test", choices=("test", "validation"))
    evaluate.add_argument("--json", action="store_true", help="print the point as JSON")
    compare = sub.add_parser(
        "compare-text", help="MOPO vs DPO, MODPO, weighted DPO and Rewarded Soups on the text task",
        description="Every method with the same label budget (online MOPO's oracle calls: steps x batch size x "
                    "candidates (candidates - 1) / 2; the offline methods train on that many labelled pairs), "
                    "trained with several seeds and evaluated on held-out prompts; prints the table of means over "
                    "seeds with 95% t-intervals (mopo_core/training/text_comparison.py) and writes points.csv "
                    "(one row per policy and seed), summary.md and comparison.json to --out.")
    compare.add_argument("--out", default="text_comparison")
    compare.add_argument("--steps", type=int, default=150, help="training steps per policy (the same for all)")
    compare.add_argument("--thresholds", type=float, nargs="+", default=[0.55, 0.65, 0.75],
                         help="MOPO's harmlessness thresholds")
    compare.add_argument("--seeds", type=int, default=5, help="training seeds per policy (at least 2; default 5)")
    compare.add_argument("--eval-prompts", type=int, default=48,
                         help="held-out prompts every policy is evaluated on (default 48)")
    compare.add_argument("--n-candidates", type=int, default=2,
                         help="online MOPO's samples per prompt; sets the label budget (default 2)")
    compare.add_argument("--n-prompts", type=int, default=240,
                         help="prompts of the task; a fifth are held out (default 240: 48 held out)")
    compare.add_argument("--sft-steps", type=int, default=300, help="the reference's SFT steps (default 300)")
    compare.add_argument("--seed", type=int, default=0, help="the task's and the reference's seed")
    runs = sub.add_parser("runs", help="list, show, export or import recorded runs")
    runs_sub = runs.add_subparsers(dest="action", required=True)
    runs_sub.add_parser("list")
    mark = runs_sub.add_parser("mark-interrupted", help="mark runs whose process died (e.g. SIGKILL) as interrupted")
    mark.add_argument("run_ids", type=int, nargs="+")
    show = runs_sub.add_parser("show")
    show.add_argument("run_id", type=int)
    export = runs_sub.add_parser("export")
    export.add_argument("run_id", type=int)
    export.add_argument("path", help="target file; .csv or .json")
    imported = runs_sub.add_parser("import", help="record evaluated points from a CSV or JSON file (format: "
                                                  "mopo_core/experiments/imports.py); prints the new run ids")
    imported.add_argument("file", help="a .csv or .json file of evaluated points")
    imported.add_argument("--name", help="the runs' name (default: the file's stem)")
    data = sub.add_parser("data", help="public preference files (PKU-SafeRLHF, HH-RLHF, ShareGPT/alpaca DPO)")
    data_sub = data.add_subparsers(dest="action", required=True)
    inspect = data_sub.add_parser("inspect", help="load a file and print its report; bad rows: exit status 2")
    inspect.add_argument("file")
    inspect.add_argument("--format", default="auto", choices=("auto", *FORMATS))
    inspect.add_argument("--objective", help="the objective of a one-objective file (hh, sharegpt, alpaca)")
    inspect.add_argument("--skip-bad-rows", action="store_true", help="leave bad rows out (they are listed)")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    preview = sub.add_parser(
        "preview", help="threshold preview: exact tabular MOPO over a preference file's responses (no training)",
        description="Before any training: the exact tabular MOPO over the file's own responses (win-rates from its "
                    "labels, smoothed by --prior; pi_ref uniform over each prompt's responses; one lambda shared "
                    "across prompts, prompts equally weighted). Prints, per threshold, whether it is attainable, "
                    "the predicted lambda, values and KL, with pi_ref's values and the attainable maxima "
                    "(mopo_core/data/preview.py). No run is recorded.")
    preview.add_argument("file", help="preference file: this project's schema or a public format with K >= 2 "
                                      "objectives (e.g. PKU-SafeRLHF)")
    preview.add_argument("--format", default="auto", choices=PREVIEW_FORMATS)
    preview.add_argument("--objective", help="the objective of a one-objective file (refused: a preview needs K >= 2)")
    preview.add_argument("--tau", type=float, default=0.08, help="KL strength (default 0.08)")
    preview.add_argument("--prior", type=float, default=1.0,
                         help="pseudo-comparisons per pair, centred on a tie (default 1; 0: raw label averages)")
    preview.add_argument("--thresholds", type=float, nargs="+", metavar="B",
                         help="thresholds of the secondary objective (K = 2), or with K > 2 J values per row, "
                              "rows one after another (default: pi_ref's value, then up to the attainable max)")
    preview.add_argument("--n-thresholds", type=int, default=11, help="rows of the default grid")
    preview.add_argument("--json", action="store_true", help="print the preview as JSON")
    add_models_command(sub)
    add_prefmodel_command(sub)
    return parser


class _TrainSession:
    """The trainer of one ``train`` command, its progress bar and the signal that cancelled it."""

    def __init__(self, quiet: bool):
        self.trainer, self.bar, self.signum, self.quiet = None, None, None, quiet

    def attach(self, trainer) -> None:
        from tqdm import tqdm

        self.trainer = trainer
        self.bar = tqdm(total=trainer.config.steps, desc=f"train {trainer.config.method}", disable=self.quiet)

    def progress(self, step: int, metrics: dict) -> None:
        self.bar.update(step - self.bar.n)

    def on_signal(self, signum, frame) -> None:
        """First signal: cancel after the current step. Before the trainer exists, or again: stop now.
        (Nothing is printed here: the handler may run in the middle of a write to stderr.)"""
        first, self.signum = self.signum is None, signum
        if self.trainer is None or not first:
            raise KeyboardInterrupt
        self.trainer.request_cancel()

    @contextmanager
    def signals(self):
        """SIGINT/SIGTERM handled by :meth:`on_signal` for the duration of the block (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, self.on_signal)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self.bar is not None:
                self.bar.close()


#: ``train`` flags that only a run on a preference file (--data) uses, as (flag, attribute).
DATA_FLAGS = (("--format", "format"), ("--objective", "objective"), ("--model", "model"), ("--prefmodel", "prefmodel"),
              ("--lora-r", "lora_r"), ("--split", "split"), ("--max-response-tokens", "max_response_tokens"),
              ("--eval-samples", "eval_samples"), ("--gradient-checkpointing", "gradient_checkpointing"))


def _dataset_setup(args):
    """The :class:`mopo_core.training.dataset_task.DatasetSetup` of ``train --data`` (None without --data);
    ``ValueError`` naming the flag when a data-run flag comes without --data or a needed one is missing."""
    from mopo_core.training.dataset_task import DatasetSetup

    if args.data is None:
        given = [flag for flag, name in DATA_FLAGS if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{given[0]}: only used with --data FILE (training on a preference file)")
        return None
    for flag in ("--model", "--prefmodel"):
        if getattr(args, flag[2:]) is None:
            raise ValueError(f"{flag}: required with --data")
    given = {name: getattr(args, name) for _, name in DATA_FLAGS if getattr(args, name) is not None}
    if "split" in given:
        given["split"] = tuple(given["split"])
    return DatasetSetup(data=args.data, max_new_tokens=args.max_new_tokens, **given)


def cmd_train(args, store: RunStore) -> int:
    from mopo_core.lm.config import TrainConfig
    from mopo_core.training.dataset_task import SetupError
    from mopo_core.training.tasks import task_for_setup, task_of_run
    from mopo_core.training.text_task import TextTaskSetup

    session = _TrainSession(quiet=args.json)
    hooks = {"callbacks": (session.progress,), "on_trainer": session.attach}
    try:
        data_setup = _dataset_setup(args)
        with session.signals():
            if args.resume is not None:
                result, evaluation = task_of_run(store, args.resume, "resumed").resume(store, args.resume, **hooks)
            else:
                config = TrainConfig(method=args.method, thresholds=tuple(args.threshold or (0.5,)), tau=args.tau,
                                     steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                     lambda_lr=args.lambda_lr, t0=args.t0, beta_ratchet=args.beta, seed=args.seed,
                                     eps=args.eps, chi_lr=args.chi_lr,
                                     checkpoint_every=args.checkpoint_every, online=args.online,
                                     n_candidates=args.n_candidates, max_new_tokens=args.max_new_tokens,
                                     gradient_accumulation_steps=args.grad_accum, kl_every=args.kl_every,
                                     win_rate_prior=args.win_rate_prior, kl_leash=args.kl_leash,
                                     heldout_every=args.heldout_every,
                                     objective_weights=tuple(args.objective_weights) if args.objective_weights else None)
                setup = (data_setup if data_setup is not None
                         else TextTaskSetup(n_prompts=args.n_prompts, sft_steps=args.sft_steps, seed=args.seed))
                result, evaluation = task_for_setup(setup).train(config, setup, store, args.checkpoint_dir, **hooks)
    except SetupError as exc:
        return _setup_error(exc)
    except KeyboardInterrupt:
        run_id = getattr(session.trainer, "run_id", None)
        where = f"run {run_id} (status {store.get_status(run_id)})" if run_id is not None else "before training started"
        print(f"interrupted: stopped at once, {where}", file=sys.stderr)
        return 128 + int(session.signum or signal.SIGINT)
    config = session.trainer.config
    if evaluation is None:  # cancelled by a signal: no evaluation, the checkpoint is kept
        checkpoint = session.trainer.checkpoint_dir
        if args.json:
            print(json.dumps({"run_id": result.run_id, "status": result.status, "step": result.step,
                              "multipliers": result.multipliers, "points": []}))
        else:
            hint = (f"checkpoint in {checkpoint}; continue with: python -m mopo_core train --resume {result.run_id}"
                    if checkpoint is not None else "no --checkpoint-dir was given, so it cannot be resumed")
            print(f"run {result.run_id}: {result.status} after {result.step} steps; {hint}")
        return 128 + int(session.signum) if session.signum is not None else 1
    point = evaluation.as_point(config.method, {"thresholds": list(config.thresholds), "tau": config.tau})
    judge = session.trainer.run_config.get("prefmodel")  # runs on a preference file: who judged them
    dropped = session.trainer.run_config.get("dropped_identical_after_cut") or []
    if args.json:
        print(json.dumps({"run_id": result.run_id, "status": result.status, "multipliers": result.multipliers,
                          "points": [point], **({"prefmodel": judge} if judge else {}),
                          **({"dropped_identical_after_cut": dropped} if dropped else {})}))
        return 1 if result.status == "diverged" else 0
    print(f"run {result.run_id}: {result.status} after {result.step} steps; multipliers {result.multipliers}")
    if dropped:
        shown = ", ".join(dropped[:5]) + (f" and {len(dropped) - 5} more" if len(dropped) > 5 else "")
        print(f"note: {len(dropped)} pair(s) left out: their two responses are the same text once cut to "
              f"--max-response-tokens ({shown})")
    if judge:
        print(f"judged by the preference model {judge['path']}: accuracy on the {judge['n_eval_pairs']} test pairs "
              f"{judge['eval_pairs_accuracy']}, on its own held-out splits {judge['held_out_accuracy']}")
    _print_evaluation(evaluation)
    if result.status == "diverged":  # evaluated for inspection, kept off fronts; the command failed
        print(f"error: run {result.run_id} {store.get_run(result.run_id).error}", file=sys.stderr)
        return 1
    return 0


def _setup_error(exc) -> int:
    """A :class:`mopo_core.training.dataset_task.SetupError` printed with its field as the flag; exit status 2."""
    flag = "--" + exc.field.replace("_", "-")
    print(f"error: {one_line(f'{flag}: {exc.detail}')}", file=sys.stderr)
    return 2


def cmd_evaluate(args, store: RunStore) -> int:
    from mopo_core.training.dataset_task import SetupError
    from mopo_core.training.tasks import task_of_run

    task = task_of_run(store, args.run, "evaluated")
    try:
        eval_id, evaluation = task.evaluate(store, args.run, n_samples=args.samples, split=args.split)
    except SetupError as exc:  # (a stored setup that no longer checks is a plain ValueError naming the run)
        return _setup_error(exc)
    if args.json:
        point = evaluation.as_point(store.get_run(args.run).config["method"], {})
        print(json.dumps({"run_id": eval_id, "source_run": args.run, "objectives": list(evaluation.objectives),
                          "values": point["values"], **point["extra"]}))
        return 0
    print(f"run {eval_id}: evaluation of run {args.run} on the {args.split} prompts")
    _print_evaluation(evaluation)
    return 0


def _print_evaluation(evaluation) -> None:
    for k, name in enumerate(evaluation.objectives):
        print(f"  {name:>14}: win-rate vs reference {evaluation.win_rates[k]:.3f} "
              f"± {evaluation.win_rate_stderr[k]:.3f}, mean score {evaluation.mean_scores[k]:.3f} "
              f"(reference {evaluation.reference_scores[k]:.3f})")


def cmd_compare_text(args, store: RunStore) -> int:
    from tqdm import tqdm

    from mopo_core.training.text_comparison import ComparisonSettings, markdown_table, run_comparison
    from mopo_core.training.text_task import TextTaskSetup

    setup = TextTaskSetup(n_prompts=args.n_prompts, sft_steps=args.sft_steps, seed=args.seed)
    settings = ComparisonSettings(steps=args.steps, thresholds=tuple(args.thresholds), seeds=args.seeds,
                                  eval_prompts=args.eval_prompts, n_candidates=args.n_candidates)
    result = run_comparison(setup, settings, store, progress=lambda jobs: tqdm(jobs, desc="policies x seeds"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.points.to_csv(out / "points.csv", index=False)
    table = markdown_table(result.summary, result.objectives)
    reference_point = np.round(result.reference_point, 4).tolist()
    header = (f"{settings.seeds} training seeds, {settings.eval_prompts} held-out prompts, "
              f"{settings.label_budget} oracle-labelled comparisons per method; cells: mean over seeds "
              f"± 95% t-interval half-width; dominance: intervals separated on every objective")
    volumes = result.hypervolume.round(4).to_frame().to_markdown()
    (out / "summary.md").write_text(f"{header}\n\n{table}\n\nHypervolume of the seed means (reference point "
                                    f"{reference_point}):\n\n{volumes}\n")
    (out / "comparison.json").write_text(json.dumps({"reference_point": result.reference_point.tolist(),
                                                    "thresholds": list(settings.thresholds),
                                                    "label_budget": settings.label_budget}))
    print(f"{header}\n\n{table}\n\n{volumes}")
    print(f"\nreference point {reference_point}; wrote {out}/points.csv, summary.md, "
          f"comparison.json (draw them: python -m app.figures {out})")
    return 0


def cmd_data(args, store: RunStore) -> int:
    """``data inspect``: load a public preference file and print its report (no run is recorded)."""
    report = load_public(args.file, args.format, args.objective, args.skip_bad_rows).report()
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0


def cmd_preview(args, store) -> int:
    """``preview FILE``: the threshold preview of a preference file (no run is recorded)."""
    thresholds = None
    if args.thresholds is not None:
        thresholds = np.asarray(args.thresholds, dtype=float)
    result = threshold_preview(args.file, thresholds=thresholds, tau=args.tau, prior=args.prior, fmt=args.format,
                               objective=args.objective, n_thresholds=args.n_thresholds)
    print(json.dumps(result.to_dict()) if args.json else format_preview(result))
    return 0


COMMANDS = {"solve": cmd_solve, "sweep": cmd_sweep, "suite": cmd_suite, "runs": cmd_runs, "train": cmd_train,
            "compare-text": cmd_compare_text, "evaluate": cmd_evaluate, "data": cmd_data,
            "models": cmd_models, "prefmodel": cmd_prefmodel, "preview": cmd_preview}


def one_line(message: str) -> str:
    """A (possibly multi-line) error message on one line: the first line, then the indented
    lines that list rows, joined by ``; ``."""
    first, *rest = str(message).splitlines() or [""]
    listed = [line.strip() for line in rest if line.strip()]
    return f"{first} {'; '.join(listed)}" if listed else first


def _error_text(exc: Exception) -> str:
    """What to print for a named error: a KeyError's message without its quotes, an OSError's
    file and reason."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        store = None if args.command in ("data", "models", "preview") else RunStore(args.store)
        return COMMANDS[args.command](args, store)
    except (ValueError, KeyError, OSError) as exc:
        print(f"error: {one_line(_error_text(exc))}", file=sys.stderr)
        return 2
