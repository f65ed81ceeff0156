"""The rest of the GPU path in one run: the CLI's train and resume, a dataset job through the queue
and its worker, the training-memory estimate against the allocator, unloading, and DDP.

    bench/gpu_check.sh                                  # on the GPU machine: gpu_step.py, then this script
    .venv/bin/python bench/gpu_paths.py --cpu --tiny    # smoke run on a CPU (tests/test_bench_quick.py)

It needs the project's dependencies (mopo_core imported whole) plus the test fixtures of
``tests/lm_fixtures.py``; a part whose imports fail (the GPU image lacks platformdirs and moocore:
``bench/gpu_check.sh`` installs them from wheels, see bench/README.md) is skipped with the missing
module named. Everything is built locally in a temporary folder: no network, no real weights.
Each part is independent (a failure in one does not stop the next) and reports PASS, FAIL, SKIP
(with why) or n/a. Numbered as in issue 16 (1 is gpu_step.py):

2. ``train``: ``python -m mopo_core --store S train --method mopo --steps 40 ... --checkpoint-dir D``
   on the synthetic text task, SIGINT once the store shows step 10, then ``train --resume RUN``.
   PASS: the first process exits 130 with its run ``cancelled`` before step 40, the resume exits 0
   with the same run ``finished``, and the store holds that run ``finished`` with one point and its
   loss logged once at every step 1..40. The text task has no device option (``train --help``): its
   tiny GPT trains on the CPU even on the GPU machine, so this part checks the CLI path there, not
   CUDA.
3. ``dataset job``: an OPT-1.3B architecture (``OPTConfig``: hidden 2048, 24 layers, 32 heads, ffn
   8192; ``--tiny``: hidden 64, 2 layers) with random weights and the word-level chat tokenizer of
   ``tests/lm_fixtures.py`` (so its vocabulary is 36 tokens) saved in a temporary folder, that file's
   tiny two-objective preference data, and a tiny judge fitted on its training split. A MOPO run
   (LoRA r 16, ``--tiny`` 2; bf16; ``device`` cuda, ``--cpu`` cpu; 20 steps of 8 prompts,
   ``--tiny`` 3 of 4) is enqueued (``enqueue_training``) and run by the worker process that
   ``ensure_worker`` starts. PASS: the job ends ``done``, its run ``finished`` on that device with
   every step logged and one point of two win-rates in [0, 1] (the evaluation on the test prompts).
   Peak: NVML's device memory used while the worker ran minus before it (the worker's CUDA context
   included; ``-`` on the CPU).
4. ``memory``: the same setup and config (2 steps, no store) trained in this process by
   ``DatasetTask.fit``. estimate = ``training_memory(check_setup(setup), setup, config).total``;
   measured = ``torch.cuda.max_memory_allocated`` during task load + fit minus
   ``memory_allocated`` before (weights, the reference copy, adapters' gradients and AdamW states,
   activations); ratio = measured / estimate; target |ratio - 1| <= 0.25. Then ``unload`` of the
   policy and the task's reference, the task dropped: PASS needs the ratio on target and
   ``memory_allocated`` back to exactly its value before. On the CPU the allocator's peak does not
   exist (RSS moves by the allocator's whims at these sizes): measured, ratio and the verdict are
   n/a, the estimate and unload's freed RSS are printed.
5. ``ddp``: ``tests/ddp_worker.py``'s training (tiny GPT, text-task pairs, MOPO, 6 steps) under
   ``torch.distributed.run``: 2 ranks over NCCL, one GPU each, when 2 GPUs are present; else 1 rank
   on the one GPU (no process group: the launch path only); ``--cpu``: 2 ranks over gloo. Each rank's
   model is on ``cuda:LOCAL_RANK`` (or the CPU). PASS: every value of its loss, gradient norm and
   MOPO series (``tests/lm/test_lm_distributed.py``'s ``SERIES``) differs from the same training
   in this process on ``cuda:0`` (or the CPU) by at most ``DDP_RTOL`` times its size or that
   test's absolute floor (``ABS``, else 1e-7), whichever is larger; the note gives the largest
   difference as a fraction of its tolerance. Peak: that in-process run's
   ``max_memory_allocated``.
6. A table printed last (device: the card's name, or cpu); ``gpu_paths.json`` and
   ``gpu_paths.md`` (beside gpu_step.py's) written to ``$OUT`` (or ``--out``), with the worker's
   log as ``worker.log`` when part 3 fails. Wall times are each part's own (preparing part 3's
   model, data and judge counts in part 3).

Time: the whole run stays under ``--budget`` seconds (default 250: gpu_check.sh gives this script
what gpu_step.py left of its 450); a part whose guessed time (``GUESS_S``) does not fit in what is
left is skipped, and every child process is stopped at the deadline. Exit status 1 when a part
fails.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OPT_1_3B = {"model_type": "opt", "hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 32,
            "ffn_dim": 8192, "word_embed_proj_dim": 2048, "max_position_embeddings": 2048,
            "do_layer_norm_before": True, "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0}
TINY_OPT = {**OPT_1_3B, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 128,
            "word_embed_proj_dim": 64, "max_position_embeddings": 256}
#: Guessed seconds per part (GPU run, --tiny run): a part is skipped when less than this is left.
GUESS_S = {"train": (60, 25), "dataset job": (150, 40), "memory": (60, 15), "ddp": (60, 30)}
TEXT_STEPS, TEXT_CANCEL_AT = 40, 10
MEMORY_TOLERANCE = 0.25
DDP_SETTINGS = {"method": "mopo", "thresholds": [0.8], "steps": 6, "batch_size": 4}
DDP_RTOL = 1e-5
ENDED = ("done", "cancelled", "failed", "interrupted")
GIB = 2**30


class Skip(Exception):
    """The part cannot run here (a missing module, no time): reported as SKIP with the reason."""


@dataclass
class Context:
    """What every part gets: the options, the device and its card's name, a temporary folder, the
    run's deadline (``time.perf_counter``) and parts 3-4's (setup, config) once prepared."""

    args: argparse.Namespace
    device: torch.device
    card: str
    tmp: Path
    deadline: float
    prepared: tuple | None = None

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def _imports(*modules: str) -> list:
    """The modules, imported; ``Skip`` naming the first missing package."""
    try:
        return [importlib.import_module(m) for m in modules]
    except ModuleNotFoundError as exc:
        raise Skip(f"needs {exc.name} (not installed)") from None


def _child_env() -> dict:
    """This environment with the repository root first on PYTHONPATH (for ``tests`` and ``synthetic``)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _run(cmd: list[str], ctx: Context, log: Path) -> int:
    """Run ``cmd`` in the repository root, output to ``log``; its exit status (-9: killed at the deadline)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_child_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            return proc.wait(timeout=max(1.0, ctx.left()))
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


def _tail(path: Path, n: int = 400) -> str:
    """The last ``n`` characters of a log, on one line."""
    return " ".join(path.read_text()[-n:].split()) if path.exists() else "(no output)"


# ------------------------------------------------------------------------------ 2. train and resume


def part_train(ctx: Context) -> dict:
    _imports("mopo_core.cli.main")
    from mopo_core.runs import RunStore

    store_path, ckdir = ctx.tmp / "text.sqlite", ctx.tmp / "text-checkpoint"
    cli = [sys.executable, "-m", "mopo_core", "--store", str(store_path), "train"]
    first = cli + ["--method", "mopo", "--steps", str(TEXT_STEPS), "--batch-size", "4", "--n-prompts", "10",
                   "--sft-steps", "20", "--seed", "3", "--checkpoint-dir", str(ckdir), "--checkpoint-every", "5",
                   "--json"]
    log, store = ctx.tmp / "train.log", RunStore(store_path)
    with open(log, "w") as out:
        proc = subprocess.Popen(first, cwd=ROOT, env=_child_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            run_id = _interrupt_at(proc, store, ctx)
            code = proc.wait(timeout=max(1.0, ctx.left()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if run_id is None:
        return {"ok": False, "device": "cpu",
                "note": f"the run logged no step {TEXT_CANCEL_AT} (exit {proc.returncode}): {_tail(log)}"}
    stopped = store.get_run(run_id)
    if code != 128 + signal.SIGINT or stopped.status != "cancelled":
        return {"ok": False, "device": "cpu", "note": f"after SIGINT: exit {code}, run {run_id} {stopped.status} "
                                                      f"(finished before the signal? raise TEXT_STEPS): {_tail(log)}"}
    stopped_at = int(stopped.metrics.step.max())
    log = ctx.tmp / "resume.log"
    code = _run(cli + ["--resume", str(run_id), "--json"], ctx, log)
    run = store.get_run(run_id)
    loss_steps = sorted(run.metrics[run.metrics.name == "loss"].step.astype(int).tolist())
    ok = (code == 0 and run.status == "finished" and len(run.points) == 1
          and loss_steps == list(range(1, TEXT_STEPS + 1)))
    note = (f"run {run_id}: cancelled at step {stopped_at}, resumed: exit {code}, {run.status}, "
            f"{len(run.points)} point, loss at {len(loss_steps)} steps; models on the CPU (the text task has no "
            f"device option)")
    return {"ok": ok, "note": note if ok else f"{note}: {_tail(log)}", "device": "cpu"}


def _interrupt_at(proc: subprocess.Popen, store, ctx: Context) -> int | None:
    """SIGINT ``proc`` once its (the store's only) train run logged step ``TEXT_CANCEL_AT``; the run id,
    None when the process ended or the time ran out first."""
    while proc.poll() is None and ctx.left() > 0:
        runs = store.list_runs(kind="train").id.tolist()
        if runs:
            step = store.progress(runs)[int(runs[0])]["step"]
            if step is not None and step >= TEXT_CANCEL_AT:
                proc.send_signal(signal.SIGINT)
                return int(runs[0])
        time.sleep(0.02)
    return None


# ------------------------------------------------------------------------------ 3. a dataset job


def prepare(ctx: Context):
    """(setup, config) of parts 3 and 4, built once: the OPT checkpoint, preference file and judge."""
    if ctx.prepared is None:
        from mopo_core.lm.config import TrainConfig
        from mopo_core.lm.models import build_model, load_tokenizer, save_model
        from mopo_core.training.dataset_task import DatasetSetup, load_splits
        from tests.lm_fixtures import SPLIT, chat_tokenizer, fit_judge, tiny_encoder, write_preference_file

        tokenizer = chat_tokenizer()
        ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad")}
        spec = {**(TINY_OPT if ctx.args.tiny else OPT_1_3B), "vocab_size": len(tokenizer), **ids}
        with torch.device(ctx.device):  # weights initialised where they live
            model = build_model(spec, dtype="bf16", device=ctx.device)
        model_dir = save_model(model, tokenizer, ctx.tmp / "opt")
        del model
        gc.collect()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        data = write_preference_file(ctx.tmp / "prefs.jsonl")
        setup = DatasetSetup(data=str(data), model=str(model_dir), prefmodel="", split=SPLIT,
                             lora_r=2 if ctx.args.tiny else 16, max_response_tokens=8,
                             eval_samples=2 if ctx.args.tiny else 4, max_new_tokens=3 if ctx.args.tiny else 8,
                             dtype="bf16", device=str(ctx.device))
        train, _, _ = load_splits(setup, load_tokenizer(model_dir))
        judge = fit_judge(train, tiny_encoder(ctx.tmp / "encoder"), ctx.tmp / "judge",
                          {"split": list(SPLIT), "split_seed": 0})
        steps = 3 if ctx.args.tiny else 20  # checkpoint_every = steps: few writes of the 1.3B weights
        config = TrainConfig(method="mopo", thresholds=(0.6,), steps=steps, batch_size=4 if ctx.args.tiny else 8,
                             lr=1e-4, checkpoint_every=steps, seed=3)
        ctx.prepared = (replace(setup, prefmodel=str(judge)), config)
    return ctx.prepared


def part_dataset_job(ctx: Context) -> dict:
    jobs, _, _ = _imports("mopo_core.training.jobs", "mopo_core.cli.worker", "tests.lm_fixtures")
    from mopo_core.runs import RunStore

    setup, config = prepare(ctx)
    store_path = ctx.tmp / "jobs.sqlite"
    job_id = jobs.enqueue_training(store_path, config, setup, name="gpu_paths")
    used_before = _device_used(ctx.device)
    pid = jobs.ensure_worker(store_path)
    peak_used, job = used_before, jobs.get_job(store_path, job_id)
    while job.status not in ENDED and ctx.left() > 0:
        time.sleep(0.2)
        used = _device_used(ctx.device)
        peak_used = peak_used if used is None else max(peak_used, used)
        job = jobs.get_job(store_path, job_id)
    log = jobs.jobs_dir(store_path) / "worker.log"
    if job.status not in ENDED:
        os.kill(pid, signal.SIGKILL)
        return {"ok": False, "note": f"job {job_id} still {job.status} at the deadline: {_tail(log)}", "log": log}
    peak = None if used_before is None else (peak_used - used_before) / GIB
    run = RunStore(store_path).get_run(job.run_id) if job.run_id is not None else None
    values = run.points["values"].tolist()[0] if run is not None and len(run.points) == 1 else []
    ok = (job.status == "done" and run.status == "finished" and run.config["dataset_setup"]["device"] == str(ctx.device)
          and int(run.metrics.step.max()) == config.steps and len(values) == 2 and all(0 <= v <= 1 for v in values))
    note = (f"job {job_id}: {job.status}{f' ({job.error})' if job.error else ''}; run {job.run_id} "
            f"{run.status if run is not None else '-'}, win-rates {[round(v, 3) for v in values]}"
            + ("; peak = NVML device memory used, the worker's CUDA context included" if peak is not None else ""))
    return {"ok": ok, "note": note, "peak_gib": peak, **({} if ok else {"log": log})}


def _device_used(device: torch.device) -> int | None:
    """Bytes in use on the GPU as NVML sees them (every process); None on the CPU or without NVML."""
    if device.type != "cuda":
        return None
    try:
        return torch.cuda.device_memory_used(device)
    except Exception:  # no pynvml / NVML: the peak is left out
        return None


# ------------------------------------------------------------------------------ 4. memory and unload


def part_memory(ctx: Context) -> dict:
    dataset_task, memory, _ = _imports("mopo_core.training.dataset_task", "mopo_core.lm.memory", "tests.lm_fixtures")
    setup, config = prepare(ctx)
    config = replace(config, steps=2)
    estimate = dataset_task.training_memory(dataset_task.check_setup(setup), setup, config)
    cuda = ctx.device.type == "cuda"
    gc.collect()
    before = memory.memory_use()
    if cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    task = dataset_task.DatasetTask(setup)
    policy, result = task.fit(config)
    measured = (torch.cuda.max_memory_allocated(ctx.device) - before.cuda_allocated) / GIB if cuda else None
    freed = [memory.unload(policy), memory.unload(task.reference)]
    del task, policy
    gc.collect()
    after = memory.memory_use()
    row = {"estimate_gib": estimate.total / GIB, "measured_gib": measured, "peak_gib": measured,
           "estimate_parts": estimate.describe()}
    if not cuda:
        rss = sum(f.rss or 0 for f in freed) / GIB
        return {**row, "ok": None, "note": f"n/a on CPU (no allocator peak); fit {result.status}; estimate "
                                           f"{estimate.total / 2**20:.1f} MiB: {estimate.describe()}; unload freed "
                                           f"{rss:.3f} GiB RSS"}
    ratio = measured / (estimate.total / GIB)
    residue = after.cuda_allocated - before.cuda_allocated
    freed_gib = sum(f.cuda_allocated for f in freed) / GIB
    ok = result.status == "finished" and abs(ratio - 1) <= MEMORY_TOLERANCE and residue == 0
    return {**row, "ok": ok, "ratio": ratio,
            "note": f"ratio {ratio:.2f} (target {1 - MEMORY_TOLERANCE:.2f}-{1 + MEMORY_TOLERANCE:.2f}); estimate "
                    f"{estimate.describe()}; unload freed {freed_gib:.2f} GiB, allocated after - before "
                    f"{residue} bytes"}


# ------------------------------------------------------------------------------ 5. DDP


def ddp_train(settings: dict, device: torch.device) -> list[dict]:
    """``tests/ddp_worker.py``'s training with the model on ``device``; the metric history."""
    from mopo_core.data.preferences import PreferenceDataset
    from mopo_core.lm.config import TrainConfig
    from mopo_core.lm.models import tiny_gpt, word_tokenizer
    from mopo_core.lm.trainer import Trainer
    from synthetic.text_task import TextTask, vocabulary

    config = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    task = TextTask(n_prompts=6, n_candidates=6, seed=0)
    pairs = [r for r in task.sample_pairs(8, seed=0) if r["response_a"] != r["response_b"]]
    data = PreferenceDataset.from_records(pairs)
    tokenizer = word_tokenizer(vocabulary())
    model = tiny_gpt(len(tokenizer), n_layer=2, n_head=2, n_embd=32, n_positions=64, seed=0).to(device)
    return Trainer(model, tokenizer, data, config).train().history


def ddp_rank(out: str, device_type: str) -> None:
    """One torchrun process of part 5: train, and in process 0 write the history to ``out``."""
    from mopo_core.lm import distributed

    torch.set_num_threads(1)
    distributed.init_from_env()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if device_type == "cuda" else torch.device("cpu")
    history = ddp_train(DDP_SETTINGS, device)
    if distributed.rank() == 0:
        Path(out).write_text(json.dumps({"world_size": distributed.world_size(), "history": history}))


def part_ddp(ctx: Context) -> dict:
    (test,) = _imports("tests.lm.test_lm_distributed")
    cuda = ctx.device.type == "cuda"
    ranks = 2 if not cuda or torch.cuda.device_count() >= 2 else 1
    how = f"{ranks} rank{'s' * (ranks > 1)} over {'NCCL' if cuda else 'gloo'}" if ranks > 1 else "1 rank on cuda:0"
    out, log = ctx.tmp / "ddp.json", ctx.tmp / "ddp.log"
    code = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
                 str(Path(__file__).resolve()), "--ddp-rank", str(out), ctx.device.type], ctx, log)
    if code != 0 or not out.exists():
        return {"ok": False, "note": f"{how}: torchrun exited {code}: {_tail(log)}"}
    launched = json.loads(out.read_text())
    if cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    single = ddp_train(DDP_SETTINGS, torch.device("cuda", 0) if cuda else ctx.device)
    peak = torch.cuda.max_memory_allocated(ctx.device) / GIB if cuda else None
    same_steps = [h["step"] for h in single] == [h["step"] for h in launched["history"]]
    worst = max((abs(b[name] - a[name]) / max(DDP_RTOL * abs(a[name]), test.ABS.get(name, 1e-7))
                 for a, b in zip(single, launched["history"]) for name in test.SERIES if name in a), default=0.0)
    return {"ok": same_steps and launched["world_size"] == ranks and worst <= 1, "peak_gib": peak,
            "note": f"{how} vs one process on {'cuda:0' if cuda else 'the CPU'}: {len(single)} steps, largest "
                    f"difference {worst:.2f} of its tolerance (relative {DDP_RTOL:g}, or the test's absolute floor)"}


# ------------------------------------------------------------------------------ report


PARTS = {"train": part_train, "dataset job": part_dataset_job, "memory": part_memory, "ddp": part_ddp}
CHECKS = {"train": "CLI train, SIGINT, train --resume (text task)",
          "dataset job": "OPT LoRA bf16 run via queue + worker, evaluated",
          "memory": "training_memory vs max_memory_allocated; unload",
          "ddp": "DDP trajectory equals one process"}


def run_part(name: str, ctx: Context) -> dict:
    """Part ``name``'s table row: its result, status and wall time; SKIP when its guessed time does not fit."""
    row = {"part": name, "check": CHECKS[name], "device": ctx.card}
    guess = GUESS_S[name][1 if ctx.args.tiny else 0]
    start = time.perf_counter()
    try:
        if ctx.left() < guess:
            raise Skip(f"time budget ({ctx.left():.0f} s left, about {guess} s needed)")
        result = PARTS[name](ctx)
    except Skip as exc:
        result = {"ok": "skip", "note": str(exc)}
    except Exception as exc:  # one part's failure is reported, the next part still runs
        traceback.print_exc()
        result = {"ok": False, "note": f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"}
    row.update(result)
    row["status"] = {True: "PASS", False: "FAIL", None: "n/a", "skip": "SKIP"}[row.pop("ok")]
    row["wall_s"] = time.perf_counter() - start
    print(f"{name}: {row['status']} ({row['wall_s']:.1f} s) {row['note']}", flush=True)
    return row


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else f"{value:{spec}}"


def markdown(rows: list[dict], card: str) -> str:
    lines = [f"card: {card}", "", "| part | check | status | wall s | device | peak GiB | estimate GiB | "
             "measured GiB | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['part']} | {r['check']} | {r['status']} | {r['wall_s']:.1f} | {r['device']} | "
                     f"{_fmt(r.get('peak_gib'))} | {_fmt(r.get('estimate_gib'))} | {_fmt(r.get('measured_gib'))} | "
                     f"{_fmt(r.get('ratio'))} |")
    return "\n".join(lines)


def write_outputs(folder: str, report: dict, table: str, rows: list[dict]) -> None:
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    (path / "gpu_paths.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (path / "gpu_paths.md").write_text(table + "\n\n" + "\n".join(f"- {r['part']}: {r['note']}" for r in rows) + "\n")
    for r in rows:
        if "log" in r:
            (path / "worker.log").write_text(Path(r["log"]).read_text()[-200_000:])


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (with --tiny: a smoke test)")
    parser.add_argument("--tiny", action="store_true", help="a tiny OPT and short runs")
    parser.add_argument("--budget", type=float, default=250.0, help="seconds for the whole run (default 250)")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_paths.json/.md (default $OUT)")
    parser.add_argument("--ddp-rank", nargs=2, metavar=("OUT", "DEVICE_TYPE"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    start = time.perf_counter()
    args = parse(argv)
    if args.ddp_rank:
        ddp_rank(*args.ddp_rank)
        return 0
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu (and --tiny) for a smoke test", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu else "cuda", None if args.cpu else 0)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# bench/gpu_paths.py on {card} ({torch.cuda.device_count() if device.type == 'cuda' else 0} GPUs): "
          f"torch {torch.__version__}; budget {args.budget:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_paths-") as tmp:
        ctx = Context(args, device, card, Path(tmp), start + args.budget)
        rows = [run_part(name, ctx) for name in PARTS]
        report = {"card": card, "torch": torch.__version__, "args": {k: v for k, v in vars(args).items()
                                                                       if k not in ("out", "ddp_rank")},
                  "parts": rows, "wall_s": time.perf_counter() - start}
        table = markdown(rows, card)
        if args.out:
            write_outputs(args.out, report, table, rows)
    failed = [r["part"] for r in rows if r["status"] == "FAIL"]
    print(f"\nwall {report['wall_s']:.0f} s; parts: {'FAIL: ' + ', '.join(failed) if failed else 'no failure'}")
    print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
