"""The trainer under ``torchrun``: 2 CPU processes (gloo), with DDP or FSDP, follow the same loss
trajectory as one process with the same global batch and end with the same model; gradient
accumulation changes nothing either."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.ddp_worker import train

ROOT = Path(__file__).resolve().parents[2]
SERIES = ("loss", "grad_norm", "lambda_1", "constraint_1", "ess", "kl_to_start", "kl_multiplier")
# absolute tolerance per series: the leash's KL (about 0.01-0.2 nats here) is sampled from weights that
# differ by float32 rounding between the runs; 1e-6 nats is still far below any real difference
ABS = {"kl_to_start": 1e-6, "kl_multiplier": 1e-6}  # grad_norm: Adam hides a mis-scaled gradient


def _compare(a: list[dict], b: list[dict], rel=1e-5):
    assert [h["step"] for h in a] == [h["step"] for h in b]
    for x, y in zip(a, b):
        for name in SERIES:
            if name in x:
                assert y[name] == pytest.approx(x[name], rel=rel, abs=ABS.get(name, 1e-7)), (x["step"], name)


@pytest.mark.slow
@pytest.mark.parametrize("settings", [
    dict(method="mopo", thresholds=[0.8], steps=6, batch_size=4),
    # a budget of (1 + lambda) / 50 nats: the leash pulls from the second step (leash rows in the loss)
    dict(method="mopo", thresholds=[0.8], steps=6, batch_size=4, tau=50.0, gradient_accumulation_steps=2),
    dict(method="dpo", steps=6, batch_size=6),
    dict(method="mopo", thresholds=[0.8], steps=6, batch_size=4, gradient_accumulation_steps=2, parallel="fsdp",
         kl_leash=False),
    dict(method="dpo", steps=6, batch_size=6, parallel="fsdp"),
])
def test_two_gloo_processes_follow_the_single_process_trajectory(tmp_path, settings):
    out = tmp_path / "ddp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "ddp_worker.py"), str(out), json.dumps(settings), str(tmp_path / "two")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    distributed_run = json.loads(out.read_text())
    assert distributed_run["world_size"] == 2
    single = train({k: v for k, v in settings.items() if k != "parallel"}, tmp_path / "one")
    _compare(single, distributed_run["history"])
    # the checkpoint process 0 wrote (gathered from the shards under FSDP) holds the same model
    two, one = (torch.load(tmp_path / d / "last.pt", weights_only=True) for d in ("two", "one"))
    assert two["fsdp"] == (settings.get("parallel") == "fsdp") and two["model"].keys() == one["model"].keys()
    for name, value in one["model"].items():
        torch.testing.assert_close(two["model"][name], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["mopo", "dpo", "sft"])
def test_gradient_accumulation_gives_the_same_updates(method):
    base = dict(method=method, thresholds=[0.8], steps=5, batch_size=4)
    _compare(train(base), train({**base, "gradient_accumulation_steps": 3}))
