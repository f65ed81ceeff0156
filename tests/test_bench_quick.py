"""Every benchmark under ``bench/`` still runs: each script's quick mode as a subprocess (this
interpreter, the repository root as working directory, one BLAS/torch thread), which must exit
0 and print its result lines (ratios, checks, tables). A script under ``bench/`` that no case
runs fails ``test_every_bench_script_has_a_quick_run``, so a new benchmark gets a smoke run too.

The quick modes write only to temporary folders (``MOPO_STORE`` and ``--out`` point into
``tmp_path``); none needs the network, ``../shared`` data, a real model or TRL (without TRL the
throughput bench prints that TRL's comparison was skipped)."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
NUMBER = r"[0-9]+(?:\.[0-9]+)?"


@dataclass(frozen=True)
class QuickRun:
    """A quick-mode command (``{python}`` and ``{tmp}`` filled in), the bench scripts it runs,
    a pattern for each result line it must print with how many times it must match, and the
    files (under ``{tmp}``) it must write."""

    command: tuple[str, ...]
    covers: tuple[str, ...]
    expected: tuple[tuple[str, int], ...]
    writes: tuple[str, ...]


TRL_LINE = (r"vs TRL DPOTrainer tokens/s: our DPO [0-9.]+x, our MOPO [0-9.]+x"
            if importlib.util.find_spec("trl") else r"TRL not installed: skipped")

RUNS = {
    "tabular": QuickRun(
        ("{python}", "bench/tabular.py", "--quick", "--json", "{tmp}/tabular.json"),
        ("tabular.py",),
        ((rf"N=\s*8: median ratio {NUMBER}x", 1), (rf"N=\s*16: median ratio {NUMBER}x", 1),
         (rf"ratio naive / sweep = {NUMBER}x", 1), (r"agreement with the peer: max \|V diff\|", 1),
         (r"\| bt_conflict N=200 M=32 K=2 \| 100 \|", 1)),
        ("tabular.json",)),
    "train_throughput": QuickRun(
        ("{python}", "bench/train_throughput.py", "--quick", "--threads", "1", "--json", "{tmp}/train.json"),
        ("train_throughput.py",),
        ((rf"MOPO / DPO tokens/s: {NUMBER}x \(same batch_size\), {NUMBER}x \(DPO with matched rows\)", 2),
         (TRL_LINE, 2), (rf"\| gpt2 6x256 \| mopo \| 8 \| {NUMBER} \|", 1)),
        ("train.json",)),
    "app_rerun": QuickRun(
        ("{python}", "bench/app_rerun.py", "--quick"),
        ("app_rerun.py", "server_like.py"),
        ((rf"Explore rerun after a threshold change: median {NUMBER} ms", 1),
         (rf"ratio change / no-op = {NUMBER}x", 1), (rf"100-threshold sweep at the default size .*: {NUMBER} ms", 1),
         (rf"compiling the page, once per server process: {NUMBER} ms", 1)),
        ()),
    "browser_latency": QuickRun(
        ("{python}", "bench/browser_latency.py", "--quick", "--breakdown", "--browser-slowdown", "1.5"),
        ("browser_latency.py",),
        ((r"(the page's CPU slowed 1.5x|not installed: skipped)", 1),
         (rf"(Explore threshold key -> changed plot: median {NUMBER} ms, p90 {NUMBER} ms over 3 changes"
          r"|selenium, chromium or chromedriver not installed: skipped)", 1),
         (rf"(Explore threshold key -> idle page: median {NUMBER} ms|not installed: skipped)", 1),
         (rf"(CPU per change, key to idle page \(mean\): server process {NUMBER} ms|not installed: skipped)", 1)),
        ()),
    "memory_calibration": QuickRun(
        ("{python}", "bench/memory_calibration.py", "--quick", "--out", "{tmp}/memory"),
        ("memory_calibration.py",),
        ((rf"vocab 50272\) LoRA r4 bf16 4x64: estimate {NUMBER} GiB, measured {NUMBER} GiB \(profiler {NUMBER} GiB\), "
          rf"ratio estimate/measured {NUMBER}", 1),
         (rf"vocab 151936\) full bf16 4x64: estimate {NUMBER} GiB, measured {NUMBER} GiB, ratio estimate/measured {NUMBER}", 1),
         (rf"vocab 151936\) LoRA r4 \+ 2 leash rows bf16 2x64: estimate {NUMBER} GiB, measured {NUMBER} GiB, "
          rf"ratio estimate/measured {NUMBER}", 1),
         (rf"largest \|ratio - 1\|: {NUMBER}", 1)),
        ("memory/memory_calibration.txt", "memory/memory_calibration.json")),
    "pku_smollm2": QuickRun(
        ("{python}", "bench/pku_smollm2.py", "--quick", "--out", "{tmp}/pku"),
        ("pku_smollm2.py",),
        ((rf"helpfulness {NUMBER} ± {NUMBER}  harmlessness {NUMBER} ± {NUMBER}", 8),
         (r"\| mopo +\| +3 \|", 1), (r"comparison run [0-9]+; wall time", 1)),
        ("pku/points.csv", "pku/summary.md", "pku/prefmodel")),
    "calibration": QuickRun(
        ("{python}", "bench/calibration.py", "--quick", "--out", "{tmp}/calibration"),
        ("calibration.py",),
        ((r"^verdict mopo\S*: satisfaction >= 0\.95 in every \(structure, n\): (yes|no) \(lowest ", 4),
         (rf"^calibration of the bootstrap: B = 20, 8 thresholds, Brier {NUMBER}, ECE {NUMBER}$", 1),
         (r"^\| all +\| +400 \| ", 4)),
        ("calibration/calibration.txt", "calibration/calibration.csv", "calibration/calibration_runs.csv",
         "calibration/calibration_thresholds.csv")),
    "bootstrap": QuickRun(
        ("{python}", "bench/bootstrap.py", "--quick", "--json", "{tmp}/bootstrap.json"),
        ("bootstrap.py",),
        ((rf"solve_batched +{NUMBER} ms, loop of solve_tabular +{NUMBER} ms \(ratio {NUMBER}x\)", 2),
         (r"agreement with the loop: max \|policy diff\| [0-9.e+-]+, feasibility flags differing 0/", 2),
         (r"^\| bt_conflict N=8 M=1 K=2 \| 50 \| ", 1)),
        ("bootstrap.json",)),
    "robust": QuickRun(
        ("{python}", "bench/robust.py", "--quick"),
        ("robust.py",),
        ((rf"ours +{NUMBER} ms, Clarabel +{NUMBER} ms, ratio +{NUMBER}x", 4),
         (r"^\| 0\.1 \| 4 \| ", 1)),
        ()),
    "instant_starts": QuickRun(
        ("{python}", "bench/instant_starts.py", "--quick"),
        ("instant_starts.py",),
        ((rf"^built-in model ready: before {NUMBER} s \(fit; process {NUMBER} s\), after {NUMBER} s \(cache hit; "
          rf"process {NUMBER} s\), ratio {NUMBER}x; target < 3 s: (met|NOT met)$", 1),
         (rf"^text-task job's first step \(30 SFT steps\): before {NUMBER} s \(fit; process {NUMBER} s\), after "
          rf"{NUMBER} s \(cache hit; process {NUMBER} s\), ratio {NUMBER}x; target < 5 s: (met|NOT met)$", 1)),
        ()),
    "compare_scale": QuickRun(
        ("{python}", "bench/compare_scale.py", "--quick"),
        ("compare_scale.py", "server_like.py"),
        ((rf"Compare rerun, 4 runs selected of 300: median {NUMBER} ms", 1),
         (rf"Compare rerun, 40 runs selected of 300: median {NUMBER} ms, .*target < 300 ms: (met|MISSED)", 1),
         (rf"get_runs \(40, one query\): {NUMBER} ms", 1), (rf"ratio 40 / 4 selected = {NUMBER}x", 1),
         (rf"compiling the page, once per server process: {NUMBER} ms", 1)),
        ()),
    "gpu_check": QuickRun(
        ("bash", "bench/gpu_check.sh", "--cpu", "--tiny", "--out", "{tmp}/gpu"),
        ("gpu_check.sh", "gpu_step.py", "gpu_paths.py"),
        ((r"^check: PASS$", 1),
         (rf"\| tiny-(llama|opt) \| (full|lora) \| (mopo|dpo) \| (plain|fused) \| {NUMBER} \|", 16),
         (r"^(train|dataset job|ddp): PASS \(", 3), (rf"^memory: n/a \(.*; estimate {NUMBER} MiB: parameters ", 1),
         (rf"^\| (train|dataset job|memory|ddp) \| [^|]+ \| (PASS|n/a) \| {NUMBER} \| cpu \|", 4),
         (r"^gpu_check: gpu_step\.py exit 0, gpu_paths\.py exit 0", 1)),
        ("gpu/gpu_step.json", "gpu/gpu_step.md", "gpu/gpu_paths.json", "gpu/gpu_paths.md")),
}
SLOW = {"train_throughput", "pku_smollm2", "gpu_check", "calibration", "instant_starts"}  # each 5 to 20 s on a
#                                        quiet 2-core machine (gpu_check: about 2 minutes on a busy one; instant_starts:
#                                        about 50 s on a busy one, most of it the built-in model's fit and 4 imports)


def test_every_bench_script_has_a_quick_run():
    scripts = {p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh")}
    covered = {name for run in RUNS.values() for name in run.covers}
    assert scripts == covered, f"bench scripts without a quick run: {sorted(scripts - covered)}; " \
                               f"quick runs of missing scripts: {sorted(covered - scripts)}"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in RUNS])
def test_the_quick_run_exits_0_and_prints_its_results(name, tmp_path):
    run = RUNS[name]
    command = [part.format(python=sys.executable, tmp=tmp_path) for part in run.command]
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update({"PYTHON": sys.executable, "MOPO_STORE": str(tmp_path / "runs.sqlite"), "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-3000:]}"
    for pattern, count in run.expected:
        found = re.findall(pattern, result.stdout, flags=re.MULTILINE)
        assert len(found) == count, f"{name}: {count} lines matching {pattern!r} expected, {len(found)} printed:\n" \
                                    f"{result.stdout[-3000:]}"
    missing = [path for path in run.writes if not (tmp_path / path).exists()]
    assert not missing, f"{name}: did not write {missing}"
