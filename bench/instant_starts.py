"""Instant starts (issue 15, item 5): the time a fresh process takes until the built-in model is
ready on the Models page (target < 3 s on the second start) and until a text-task job starts
training (target < 5 s for a second job on the same settings), before and after the reference
cache (:mod:`mopo_core.training.reference_cache`).

Run from the repository root: ``.venv/bin/python bench/instant_starts.py``, or with ``--quick``
(the text-task job on a small setup, 30 SFT steps; the built-in model is always the real one,
300 SFT steps). Each start is a new Python process with an empty cache folder for the first
("before": what every start paid without the cache, the fit) and the filled one for the second
("after": a cache hit); the two measurements have a cache folder each (the built-in model is the
default setup's reference: one entry serves both). Times are from the call (``load_entry`` /
``train_on_text_task``) to the model being loaded / the first training step, after the imports;
the process's whole wall time, imports included, is printed beside them. Everything is written
to temporary folders (the cache folders via ``$MOPO_REFERENCE_CACHE``, the run store via
``$MOPO_STORE``). Nothing here asserts a time: the verdict lines say whether the targets are met.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILTIN_TARGET_S = 3.0
JOB_TARGET_S = 5.0


def child_builtin() -> dict:
    """Load the built-in model as the Models page does; seconds to ready."""
    from app.presenters.models import load_entry
    from mopo_core.lm.registry import builtin_entry

    start = time.perf_counter()
    load_entry(builtin_entry(), "fp32", "cpu")
    return {"seconds": time.perf_counter() - start}


def child_job(sft_steps: int) -> dict:
    """Start a text-task DPO run as a queued job does; seconds to its first training step (the run
    is cancelled there: nothing after the start is timed)."""
    from mopo_core.lm.config import TrainConfig
    from mopo_core.runs import RunStore
    from mopo_core.training.text_task import TextTaskSetup, train_on_text_task

    trainers, first_step = [], []

    def on_step(step, metrics):
        if not first_step:
            first_step.append(time.perf_counter())
            trainers[0].request_cancel()

    start = time.perf_counter()
    train_on_text_task(TrainConfig(method="dpo", steps=5, batch_size=4), TextTaskSetup(sft_steps=sft_steps),
                       RunStore(os.environ["MOPO_STORE"]), callbacks=(on_step,), on_trainer=trainers.append)
    return {"seconds": first_step[0] - start}


def start(kind: str, sft_steps: int, env: dict) -> tuple[float, float]:
    """(seconds to ready, whole process wall time) of one start in a new process."""
    began = time.perf_counter()
    result = subprocess.run([sys.executable, __file__, "--child", kind, "--sft-steps", str(sft_steps)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - began
    if result.returncode != 0:
        sys.exit(f"{kind} start exited {result.returncode}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"], wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the job on 30 SFT steps (a smoke run)")
    parser.add_argument("--child", choices=("builtin", "job"), help=argparse.SUPPRESS)
    parser.add_argument("--sft-steps", type=int, default=300, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child_builtin() if args.child == "builtin" else child_job(args.sft_steps)))
        return 0
    job_steps = 30 if args.quick else 300
    with tempfile.TemporaryDirectory(prefix="instant-starts-") as tmp:
        print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; each start a new process")
        for kind, label, target, steps in (("builtin", "built-in model ready", BUILTIN_TARGET_S, 300),
                                           ("job", f"text-task job's first step ({job_steps} SFT steps)",
                                            JOB_TARGET_S, job_steps)):
            # a cache folder of its own: the built-in model is the default setup's reference, so a
            # default job would otherwise start with the built-in model's entry
            env = {**os.environ, "MOPO_REFERENCE_CACHE": str(Path(tmp) / f"cache-{kind}"),
                   "MOPO_STORE": str(Path(tmp) / "runs.sqlite"), "MOPO_MODELS": str(Path(tmp) / "models")}
            (before, before_wall), (after, after_wall) = start(kind, steps, env), start(kind, steps, env)
            print(f"{label}: before {before:.2f} s (fit; process {before_wall:.1f} s), after {after:.2f} s "
                  f"(cache hit; process {after_wall:.1f} s), ratio {before / after:.1f}x; "
                  f"target < {target:g} s: {'met' if after < target else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
