"""The training-memory estimate against the measured peak of one training step, on the CPU.

    .venv/bin/python bench/memory_calibration.py            # full run: OPT-125m and Qwen2-0.5B shapes
    .venv/bin/python bench/memory_calibration.py --quick    # smoke run: two tiny configs, under a minute

What is measured. Each case runs in a fresh interpreter (its own memory): a causal LM built from a
transformers config with seeded random weights (``mopo_core.lm.models.build_model``; nothing is
downloaded), in bf16 (``dtype`` in a case's spec) on the CPU, LoRA (``apply_lora``, r 16, all linear layers) or full
fine-tuning, and the trainer's optimizer (``torch.optim.AdamW(fused=True)`` over the trainable parameters).
The optimizer's state is made first (one AdamW step on zero gradients: the state every step after
the first finds), so the measured step is a steady-state one. Then one training step as
``Trainer._train_step`` takes it: ``zero_grad(set_to_none=True)``, the fused response log-probs
(``sequence_logprobs``, its default chunk ``FUSED_CHUNK_ELEMENTS // vocab``), the weighted
cloning loss, ``backward``, ``clip_grad_norm_(1.0)`` and ``optimizer.step()``. Batch: ``batch``
rows of ``seq`` tokens, no padding, the first quarter of each row the prompt and the rest the
response. No frozen copies (``reference_copies=0`` on both sides: a copy is its parameters'
bytes, exact by construction, and would only dilute the ratio).

measured = VmHWM after the step - VmRSS just before it + the bytes of the parameters and of the
optimizer state (which were resident before the step): the step's peak resident memory, weights
included. ``echo 5 > /proc/self/clear_refs`` resets VmHWM right before the step. glibc's malloc
is pinned (``MALLOC_MMAP_THRESHOLD_=65536``, ``MALLOC_TRIM_THRESHOLD_=0``, ``MALLOC_ARENA_MAX=2``) so
that freed blocks go back to the kernel and the peak is that of live memory, not of the
allocator's caches (the quantity ``torch.cuda.max_memory_allocated`` gives on a GPU).
Cross-check (cases flagged so: the quick run's first): a second step is read by ``torch.profiler``
(``profile_memory=True``): the running sum of its memory profile's allocations and frees, time
ordered, is the peak of live tensor bytes above the start; plus the resident bytes ->
``profiler``. On the quick run's OPT case it reads 0.152 GiB against RSS's 0.164 GiB: RSS holds
about 12 MiB that is no tensor (the autograd graph, BLAS and Python buffers), a constant that
the estimate leaves out (1% of the full run's smallest peak).

estimate = ``estimate_training_memory(config, batch, seq, "bf16", lora, logits_chunk=...,
response_len=seq - seq // 4).total`` with the chunk ``training_memory`` passes; ratio =
estimate / measured. Results (date, CPU, every row) go to ``bench/results/memory_calibration.txt``
and ``.json`` (the measurements, which ``--stored`` reads back to recompute only the estimates;
``--quick``: under ``--out``, a temporary folder by default).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
LORA_R = 16

#: ~50k vocabulary: OPT-125m's shape (pre-norm, residual dropout 0.1, tied head).
OPT_125M = {"model_type": "opt", "vocab_size": 50272, "hidden_size": 768, "word_embed_proj_dim": 768,
            "num_hidden_layers": 12, "ffn_dim": 3072, "num_attention_heads": 12, "max_position_embeddings": 2048}
#: ~150k vocabulary: Qwen2-0.5B's shape (gated MLP, grouped KV heads, tied head).
QWEN2_05B = {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
             "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
             "max_position_embeddings": 32768, "rope_theta": 1000000.0, "tie_word_embeddings": True}
#: Qwen2-0.5B's widths, heads and vocabulary with 2 of its 24 layers: its full fine-tuning in bf16
#: (scalar matrix products, below) would not end in the time a bench gets.
QWEN2_05B_2L = {**QWEN2_05B, "num_hidden_layers": 2}
#: (name, config, lora rank or None, batch, seq, profiler cross-check, leash rows) of the full run, each
#: under ~5 GiB. Small batches: bf16 matrix products on a CPU without bf16 instructions run a scalar
#: kernel (a Qwen2-0.5B LoRA step on 2 x 128 tokens took 22 minutes on a loaded 2-core machine). The
#: "+leash" cases add offline MOPO's KL leash rows to the step (one sampled response per prompt).
FULL = (
    ("qwen2-0.5b", QWEN2_05B, LORA_R, 2, 128, False, 0),
    ("qwen2-0.5b-2layers", QWEN2_05B_2L, None, 2, 64, False, 0),
    ("opt-125m", OPT_125M, LORA_R, 2, 128, False, 0),
    ("opt-125m", OPT_125M, None, 2, 128, False, 0),
    ("opt-125m+leash", OPT_125M, LORA_R, 2, 128, False, 2),
    ("qwen2-0.5b-2layers+leash", QWEN2_05B_2L, LORA_R, 2, 64, False, 2),
)
#: The quick run: the same architectures, tiny (hidden 64, 2 layers), vocab 50k and 150k.
TINY_OPT = {**OPT_125M, "hidden_size": 64, "word_embed_proj_dim": 64, "num_hidden_layers": 2, "ffn_dim": 256,
            "num_attention_heads": 4}
TINY_QWEN = {**QWEN2_05B, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2}
QUICK = (
    ("tiny-opt-50k", TINY_OPT, 4, 4, 64, True, 0),
    ("tiny-qwen2-150k", TINY_QWEN, None, 4, 64, False, 0),
    ("tiny-qwen2-150k+leash", TINY_QWEN, 4, 2, 64, False, 2),
)
#: glibc settings of the measuring child: freed memory goes back to the kernel at once.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "2"}


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _profiled_peak(step) -> int:
    """Peak of live tensor bytes above the start while ``step()`` runs, from torch.profiler's
    record of every allocation and free (its memory profile's timeline, time ordered)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    live = peak = 0
    for _, action, _, size in sorted(prof._memory_profile().timeline, key=lambda event: event[0]):
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak


def measure(spec: dict) -> dict:
    """One case in this (fresh) process: see the module doc. ``spec``: config, lora_r, batch, seq,
    dtype (default bf16), profile (also run the profiler's cross-check on a second step), leash
    (rows of offline MOPO's KL leash scored in the step: ``per_token_kl`` to a frozen copy of the
    starting model, made before the step and, like every frozen copy here, left out on both sides).
    Returns bytes: measured, resident (parameters and optimizer state) and profiler."""
    import copy

    import torch

    from mopo_core.lm.losses import per_token_kl, sequence_logprobs
    from mopo_core.lm.lora import LoraSettings
    from mopo_core.lm.models import build_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    lora = LoraSettings(r=spec["lora_r"]) if spec["lora_r"] else None
    model = build_model(spec["config"], dtype=spec.get("dtype", "bf16"), device="cpu", lora=lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.0, fused=True)  # the trainer's on the CPU
    for p in trainable:
        p.grad = torch.zeros_like(p)
    optimizer.step()  # the state every later step finds
    optimizer.zero_grad(set_to_none=True)
    batch, seq = spec["batch"], spec["seq"]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, spec["config"]["vocab_size"], (batch, seq), generator=generator)
    attention = torch.ones_like(ids)
    response = torch.zeros_like(ids)
    response[:, seq // 4:] = 1
    coefficient = torch.rand(batch, generator=generator, dtype=torch.float64)
    leash = spec.get("leash", 0)
    if leash:  # the trainer's leash rows: sampled responses of the same padded length, and the start
        start = copy.deepcopy(model).eval()
        for p in start.parameters():
            p.requires_grad_(False)
        leash_ids = torch.randint(0, spec["config"]["vocab_size"], (leash, seq), generator=generator)
        leash_attention, leash_response = torch.ones_like(leash_ids), torch.zeros_like(leash_ids)
        leash_response[:, seq // 4:] = 1

    def step():
        optimizer.zero_grad(set_to_none=True)
        logp = sequence_logprobs(model, ids, attention, response)
        loss = -(coefficient.to(logp.dtype) * logp).sum() / batch
        if leash:  # as the trainer's _clone_and_leash_loss: both in one forward, kappa * KL added
            kl = per_token_kl(model, start, leash_ids, leash_attention, leash_response)
            loss = loss + 0.5 * kl.sum() / leash
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    resident = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values())
    before = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    step()
    measured = _status_bytes("VmHWM") - before + resident
    out = {"measured": measured, "resident": resident}
    if spec.get("profile"):
        out["profiler"] = _profiled_peak(step) + resident
    return out


def in_child(spec: dict) -> dict:
    """:func:`measure` of ``spec`` in a fresh interpreter with glibc pinned (``MALLOC_ENV``)."""
    env = {**os.environ, **MALLOC_ENV, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"measuring child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def estimate_for(config: dict, lora_r, batch: int, seq: int, dtype: str = "bf16", leash: int = 0):
    """``estimate_training_memory`` as ``training_memory`` calls it (the fused path's chunk),
    with the scored positions of :func:`measure`'s rows (``seq - seq // 4`` response tokens) and
    ``leash`` leash rows like them."""
    from mopo_core.lm.checkpoints import estimate_training_memory
    from mopo_core.lm.lora import LoraSettings
    from mopo_core.lm.losses import FUSED_CHUNK_ELEMENTS

    return estimate_training_memory(config, batch, seq, dtype, LoraSettings(r=lora_r) if lora_r else None,
                                    logits_chunk=max(1, FUSED_CHUNK_ELEMENTS // config["vocab_size"]),
                                    response_len=seq - seq // 4, leash_rows=leash)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def measure_all(cases, jobs: int) -> list[dict]:
    """Each case measured in its own child process, ``jobs`` at a time: rows of name, config,
    lora_r, batch, seq and the child's numbers (bytes)."""
    from concurrent.futures import ThreadPoolExecutor

    specs = [{"model": name, "config": config, "lora_r": lora_r, "batch": batch, "seq": seq, "profile": profile,
              "leash": leash} for name, config, lora_r, batch, seq, profile, leash in cases]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return [{**spec, **got} for spec, got in zip(specs, pool.map(in_child, specs))]


def compare(measured: list[dict]) -> list[dict]:
    """The estimate beside each measured row; prints one line per row."""
    rows = []
    for m in measured:
        dtype = m.get("dtype", "bf16")
        estimate = estimate_for(m["config"], m["lora_r"], m["batch"], m["seq"], dtype, m.get("leash", 0))
        setting = (f"LoRA r{m['lora_r']}" if m["lora_r"] else "full") + (
            f" + {m['leash']} leash rows" if m.get("leash") else "")
        row = {**m, "vocab": m["config"]["vocab_size"], "setting": setting,
               "estimate_gib": estimate.total / GIB, "measured_gib": m["measured"] / GIB,
               "profiler_gib": m["profiler"] / GIB if m.get("profiler") else None,
               "ratio": estimate.total / m["measured"], "parts": estimate.describe()}
        rows.append(row)
        print(f"{row['model']} (vocab {row['vocab']}) {row['setting']} {dtype} {row['batch']}x{row['seq']}: estimate "
              f"{row['estimate_gib']:.3f} GiB, measured {row['measured_gib']:.3f} GiB"
              + (f" (profiler {row['profiler_gib']:.3f} GiB)" if row["profiler_gib"] is not None else "")
              + f", ratio estimate/measured {row['ratio']:.3f}   [{row['parts']}]", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two tiny configs (under a minute)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: bench/results; --quick: a temporary folder)")
    parser.add_argument("--jobs", type=int, default=2, help="cases measured at once (default 2)")
    parser.add_argument("--case", action="append", default=None, metavar="MODEL:SETTING",
                        help="measure only these cases (e.g. qwen2-0.5b:full, opt-125m:lora); repeatable; the "
                             "rows already in OUT/memory_calibration.json for the other cases are kept")
    parser.add_argument("--stored", action="store_true",
                        help="take the measurements stored in OUT/memory_calibration.json (from an earlier run on "
                             "this machine) and recompute only the estimates")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return 0
    out = args.out or (ROOT / "bench" / "results" if not args.quick else
                       Path(tempfile.mkdtemp(prefix="memory_calibration_")))
    out.mkdir(parents=True, exist_ok=True)
    if args.stored:
        stored = json.loads((out / "memory_calibration.json").read_text())
        header, measured = stored["header"], stored["measured"]
    else:
        header = (f"# memory_calibration ({'quick' if args.quick else 'full'}) measured "
                  f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, CPU: {cpu_name()} "
                  f"({os.cpu_count()} cores, shared), torch threads per child "
                  f"{os.environ.get('OMP_NUM_THREADS', 'default')}, {args.jobs} children at once")
        cases = QUICK if args.quick else FULL
        if args.case:
            known = {f"{c[0]}:{'lora' if c[2] else 'full'}": c for c in cases}
            unknown = set(args.case) - set(known)
            if unknown:
                parser.error(f"--case: unknown {sorted(unknown)}; known: {sorted(known)}")
            stored = json.loads((out / "memory_calibration.json").read_text()) if (
                out / "memory_calibration.json").is_file() else {"header": "", "measured": []}
            kept = [m for m in stored["measured"]
                    if f"{m['model']}:{'lora' if m['lora_r'] else 'full'}" not in args.case]
            header = "\n".join(line for line in (stored["header"], header) if line)
            measured = kept + measure_all([known[c] for c in args.case], args.jobs)
        else:
            measured = measure_all(cases, args.jobs)
    rows = compare(measured)
    worst = max(abs(r["ratio"] - 1) for r in rows)
    print(f"largest |ratio - 1|: {worst:.3f} (target <= 0.10)")
    lines = [header, "", "| model | vocab | setting | batch x seq | estimate GiB | measured GiB | profiler GiB | "
             "estimate/measured |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        prof = f"{r['profiler_gib']:.3f}" if r["profiler_gib"] is not None else "-"
        lines.append(f"| {r['model']} | {r['vocab']} | {r['setting']} | {r['batch']} x {r['seq']} | "
                     f"{r['estimate_gib']:.3f} | {r['measured_gib']:.3f} | {prof} | {r['ratio']:.3f} |")
    lines += ["", f"largest |estimate/measured - 1|: {worst:.3f}", "", "estimate parts:"]
    lines += [f"- {r['model']} {r['setting']}: {r['parts']}" for r in rows]
    (out / "memory_calibration.txt").write_text("\n".join(lines) + "\n")
    (out / "memory_calibration.json").write_text(json.dumps({"header": header, "measured": measured}, indent=1) + "\n")
    print(f"wrote {out / 'memory_calibration.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
