"""One GPU run that checks and times MOPO's LM training step (plain vs fused log-probs).

    bench/gpu_check.sh                                  # on the GPU machine, from the repository root
    .venv/bin/python bench/gpu_step.py --cpu --tiny     # smoke run on a CPU: tiny configs, 2 steps a cell

It needs torch, transformers, peft, numpy and scipy only (no network, no pip): the
``mopo_core`` submodules it uses (lm.losses, lm.models, tabular.robust, validation) are imported without
running ``mopo_core/__init__.py``, which pulls in pandas and platformdirs.

1. Check. A MOPO weighted-BC step (loss = weighted_bc_loss(sequence_logprobs(...)), backward)
   in float32 on the device against the same step on the CPU: same weights, same 2 x 64 batch
   (one row left-padded), SmolLM2-135M architecture (``--tiny``: a tiny Llama). The loss and
   the gradient norm must agree to ``CHECK_RTOL`` (relative), and the fused log-prob path
   must agree with the plain one on the device to the same tolerance.
2. Timing. Models built from configs with random weights, bf16, SDPA attention, dropout 0:
   SmolLM2-135M (LlamaConfig: hidden 576, 30 layers, 9 heads, 3 kv heads, intermediate 1536,
   vocabulary 49152, tied embeddings) and OPT-1.3B (hidden 2048, 24 layers, 32 heads, ffn
   8192, vocabulary 50272, tied). Batch 8 x 512 random tokens, no padding; each row's prompt
   is 64 to 256 tokens, the response runs to the end. A step is what ``mopo_core.lm.trainer``
   does: forward, loss, backward, ``clip_grad_norm_(1.0)``, AdamW step (fused on CUDA).
   Cells: {mopo: weighted BC, no reference forward; dpo: 4 pairs, the 8 sequences through
   the policy plus a no-grad reference forward} x {full fine-tuning; LoRA r 16 on every
   linear layer but the head, the reference being the adapter-disabled policy} x {plain:
   the model's (B, T, V) logits then an fp32 log-softmax; fused: hidden states, response
   positions only, chunked and checkpointed head + log-softmax}; ``--compile`` adds
   fused+compile (torch.compile of the chunk function) cells.
3. A table printed last; JSON and Markdown written to ``$OUT`` (or ``--out``) when set.

Numbers. tokens/s = B * T (all tokens through the policy) / median step time (wall clock,
device-synchronised, over ``--steps`` timed steps after ``--warmup``). peak = the cell's
``torch.cuda.max_memory_allocated`` (reset before the cell; weights, gradients and AdamW
states included). MFU = 6 * N * tokens/s / peak dense bf16 FLOP/s, N = weights of the linear
layers (the head included, once when tied; embeddings and attention's T-dependent FLOPs
left out), policy only: a DPO step's reference forward (2N per token more) is not counted.
Peak: 989 TFLOP/s for H100 SXM and H200 (756 for H100 PCIe), from the device name; the
measured bf16 matmul rate (8192^3; 1024^3 with ``--cpu``, 256^3 with ``--tiny``) is printed
beside it.

Targets (fused path, mopo, full fine-tuning, one H100): >= 60% MFU at 1.3B; >= 25% MFU at
135M; peak memory at 135M, batch 8 x 512, under 5.45 GiB (half the plain baseline's 10.9 GiB).
Baseline (docs RESOURCES.md, H200, plain path): 48% MFU at 1.3-1.4B; 5% and 10.9 GiB at 135M.

Time: the whole run stays under ``--budget`` seconds (default 420, for 8 minutes on one
H100 with start-up): a cell that would not fit in what is left (estimated from the previous
cell of its model) is skipped and listed as such. The exit status is 1 when the check fails.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import types
import warnings
from contextlib import nullcontext
from pathlib import Path

import peft
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]


def _core(name: str):
    """``mopo_core.<name>`` imported without running ``mopo_core/__init__.py``."""
    if "mopo_core" not in sys.modules:
        package = types.ModuleType("mopo_core")
        package.__path__ = [str(ROOT / "mopo_core")]
        sys.modules["mopo_core"] = package
    return importlib.import_module(f"mopo_core.{name}")


losses = _core("lm.losses")
lora = _core("lm.lora")
models = _core("lm.models")

SMOLLM2_135M = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
                "tie_word_embeddings": True, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5}
OPT_1_3B = {"model_type": "opt", "hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 32,
            "ffn_dim": 8192, "vocab_size": 50272, "word_embed_proj_dim": 2048, "max_position_embeddings": 2048,
            "do_layer_norm_before": True, "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0}
TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000, "tie_word_embeddings": True,
              "max_position_embeddings": 256}
TINY_OPT = {"model_type": "opt", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 128,
            "vocab_size": 1000, "word_embed_proj_dim": 64, "max_position_embeddings": 256, "dropout": 0.0,
            "attention_dropout": 0.0, "activation_dropout": 0.0}
MODELS = {"135M": SMOLLM2_135M, "1.3B": OPT_1_3B}
TINY_MODELS = {"tiny-llama": TINY_LLAMA, "tiny-opt": TINY_OPT}

CHECK_RTOL = 1e-3
CHECK_BATCH = (2, 64)
LORA = lora.LoraSettings(r=16, alpha=32.0)
LR, TAU, BETA = 1e-5, 0.5, 0.1
FIRST_CELL_GUESS_S = 30.0  # time budgeted for a model's first cell (build and warm-up included)
TARGETS = {"135M": {"mfu": 0.25, "peak_gib": 10.9 / 2}, "1.3B": {"mfu": 0.60}}


# ------------------------------------------------------------------------------ set-up


def build(spec: dict, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """A causal LM from a config dict, its weights initialised directly on ``device``, train mode."""
    with torch.device(device):
        model = models.build_model(spec, dtype=dtype, device=device, seed=seed)
    return model.train()


def make_batch(vocab: int, rows: int, length: int, seed: int, device: torch.device, left_pad: int = 0):
    """(input_ids, attention_mask, response_mask) (rows, length): random tokens, a prompt of
    length/8 to length/2 tokens, then the response to the end; row 0 left-padded by ``left_pad``."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (rows, length), generator=gen)
    prompt = torch.randint(length // 8, length // 2 + 1, (rows, 1), generator=gen)
    attention = torch.ones(rows, length, dtype=torch.long)
    attention[0, :left_pad] = 0
    prompt[0] += left_pad
    response = (torch.arange(length) >= prompt).long()
    return tuple(t.to(device) for t in (ids, attention, response))


def mopo_weights(rows: int, seed: int, device: torch.device) -> torch.Tensor:
    """Closed-form MOPO weights (rows,) of random win-rates, 2 objectives, prompts of 2 rows."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(2, rows, generator=gen, dtype=torch.float64)
    weights, _ = losses.mopo_weights(w, [0.5], TAU, torch.arange(rows) // 2)
    return weights.to(device, torch.float32)


def linear_weights(model) -> int:
    """N for MFU: elements of the weights of every linear layer (a tied head counts once)."""
    seen = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)}
    return sum(seen.values())


def peak_bf16_tflops(device: torch.device) -> float | None:
    """Dense bf16 peak of the device from its name: H100 SXM / H200 989, H100 PCIe 756, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if "H100" in name and "PCIe" in name:
        return 756.0
    return 989.0 if ("H100" in name or "H200" in name) else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, n: int, repeats: int = 10) -> float:
    """Measured bf16 n x n x n matrix product rate on random data (TFLOP/s), median of ``repeats``."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    times = []
    for i in range(repeats + 3):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e12


# ------------------------------------------------------------------------------ the check


def weighted_bc_step(model, batch, weights, fused: bool) -> tuple[float, float]:
    """Loss and global gradient norm of one weighted-BC forward + backward (gradients cleared after)."""
    model.zero_grad(set_to_none=True)
    loss = losses.weighted_bc_loss(losses.sequence_logprobs(model, *batch, fused=fused), weights)
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), float(norm)


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def check(spec: dict, device: torch.device) -> dict:
    """Device vs CPU (plain path) and fused vs plain (device) for one fp32 weighted-BC step."""
    torch.set_float32_matmul_precision("highest")  # no TF32 in the float32 check
    cpu = torch.device("cpu")
    model = build(spec, torch.float32, cpu)
    rows, length = CHECK_BATCH
    batch = make_batch(spec["vocab_size"], rows, length, seed=1, device=cpu, left_pad=8)
    weights = mopo_weights(rows, seed=1, device=cpu)
    reference = weighted_bc_step(model, batch, weights, fused=False)
    model.to(device)
    batch, weights = tuple(t.to(device) for t in batch), weights.to(device)
    results = {"cpu": reference, **{name: weighted_bc_step(model, batch, weights, fused=name == "device fused")
                                     for name in ("device plain", "device fused")}}
    del model
    errors = {f"{name} vs cpu": [relative(a, b) for a, b in zip(results[name], reference)]
              for name in ("device plain", "device fused")}
    errors["fused vs plain"] = [relative(a, b) for a, b in zip(results["device fused"], results["device plain"])]
    ok = all(e <= CHECK_RTOL for pair in errors.values() for e in pair)
    return {"ok": ok, "rtol": CHECK_RTOL, "loss_gradnorm": results, "relative_errors": errors}


# ------------------------------------------------------------------------------ timing


class Cell:
    """One timed configuration: a policy (and optimiser) with a method and a log-prob path."""

    def __init__(self, policy, optimizer, reference, method: str, logprob: str, batch, weights):
        self.policy, self.optimizer, self.reference = policy, optimizer, reference
        self.method, self.batch, self.weights = method, batch, weights
        self.options = {"fused": logprob != "plain", "compile": logprob == "fused+compile"}

    def logprobs(self, model):
        return losses.sequence_logprobs(model, *self.batch, **self.options)

    def loss(self) -> torch.Tensor:
        logp = self.logprobs(self.policy)
        if self.method == "mopo":
            return losses.weighted_bc_loss(logp, self.weights)
        with torch.no_grad(), (self.policy.disable_adapter() if self.reference is None else nullcontext()):
            ref = self.logprobs(self.policy if self.reference is None else self.reference)
        return losses.dpo_loss(logp[0::2], logp[1::2], ref[0::2], ref[1::2], BETA)

    def step(self) -> None:
        loss = self.loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.policy.parameters() if p.requires_grad], 1.0)
        self.optimizer.step()


def time_cell(cell: Cell, device: torch.device, warmup: int, steps: int) -> dict:
    """Median step time (s) and peak allocated memory (GiB, CUDA only) of ``cell``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        cell.step()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"step_s": statistics.median(times), "peak_gib": peak}


def make_policy(spec: dict, tuning: str, device: torch.device):
    """A bf16 policy (LoRA-wrapped for ``tuning == "lora"``), AdamW over its trainable weights and
    the base model's :func:`linear_weights` (LoRA adapters left out)."""
    policy = build(spec, torch.bfloat16, device)
    n_linear = linear_weights(policy)
    if tuning == "lora":
        policy = lora.apply_lora(policy, LORA)
    params = [p for p in policy.parameters() if p.requires_grad]
    return policy, torch.optim.AdamW(params, lr=LR, fused=device.type == "cuda"), n_linear


def time_model(name: str, spec: dict, args, device: torch.device, deadline: float, peak_tflops) -> list[dict]:
    """Every cell of one model (see the module docstring), skipping those past ``deadline``."""
    rows, length = args.batch
    batch = make_batch(spec["vocab_size"], rows, length, seed=2, device=device)
    weights = mopo_weights(rows, seed=2, device=device)
    logprobs = ("plain", "fused", "fused+compile") if args.compile else ("plain", "fused")
    out, estimate = [], FIRST_CELL_GUESS_S
    for tuning in ("full", "lora"):
        policy = optimizer = None  # built when its first cell fits in the budget
        for method in ("mopo", "dpo"):
            reference = None
            for logprob in logprobs:
                row = {"model": name, "tuning": tuning, "method": method, "logprob": logprob}
                if time.perf_counter() + estimate > deadline:
                    out.append({**row, "skipped": "time budget"})
                    continue
                start = time.perf_counter()
                if policy is None:
                    policy, optimizer, n_linear = make_policy(spec, tuning, device)
                if method == "dpo" and tuning == "full" and reference is None:
                    reference = build(spec, torch.bfloat16, device).eval().requires_grad_(False)
                cell = Cell(policy, optimizer, reference, method, logprob, batch, weights)
                timing = time_cell(cell, device, args.warmup, args.steps)
                estimate = time.perf_counter() - start
                tokens_per_s = rows * length / timing["step_s"]
                mfu = None if peak_tflops is None else 6 * n_linear * tokens_per_s / (peak_tflops * 1e12)
                out.append({**row, **timing, "tokens_per_s": tokens_per_s, "mfu": mfu, "n_linear": n_linear,
                            "fused_available": losses.lm_body_and_head(policy) is not None})
                print(f"  {name} {tuning:4s} {method:4s} {logprob:13s} {tokens_per_s:9.0f} tokens/s  "
                      f"{_fmt(timing['peak_gib'], '.2f', ' GiB')}  MFU {_fmt(mfu, '.1%')}", flush=True)
            del reference
        del policy, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------ report


def _fmt(value, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def markdown(cells: list[dict]) -> str:
    lines = ["| model | tuning | method | logprob | tokens/s | step ms | peak GiB | MFU |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        if "skipped" in c:
            lines.append(f"| {c['model']} | {c['tuning']} | {c['method']} | {c['logprob']} | skipped: {c['skipped']} "
                         "| | | |")
            continue
        lines.append(f"| {c['model']} | {c['tuning']} | {c['method']} | {c['logprob']} | {c['tokens_per_s']:.0f} "
                     f"| {1e3 * c['step_s']:.1f} | {_fmt(c['peak_gib'], '.2f')} | {_fmt(c['mfu'], '.1%')} |")
    return "\n".join(lines)


def target_lines(cells: list[dict]) -> list[str]:
    """The docstring's targets against the fused mopo full-fine-tuning cells."""
    lines = []
    for c in cells:
        target = TARGETS.get(c["model"])
        if target is None or "skipped" in c or (c["tuning"], c["method"], c["logprob"]) != ("full", "mopo", "fused"):
            continue
        parts = [f"MFU {_fmt(c['mfu'], '.1%')} (target >= {target['mfu']:.0%})"]
        if "peak_gib" in target:
            parts.append(f"peak {_fmt(c['peak_gib'], '.2f')} GiB (target < {target['peak_gib']:.2f})")
        lines.append(f"target {c['model']} mopo full fused: " + ", ".join(parts))
    return lines


def write_outputs(folder: str, report: dict, table: str) -> None:
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    (path / "gpu_step.json").write_text(json.dumps(report, indent=2) + "\n")
    (path / "gpu_step.md").write_text(table + "\n")


def environment(device: torch.device, matmul: float, peak_tflops) -> dict:
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "matmul_bf16_tflops": matmul, "peak_bf16_tflops": peak_tflops}


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (with --tiny: a smoke test)")
    parser.add_argument("--tiny", action="store_true", help="tiny Llama and OPT configs, batch 4 x 64, 1+1 steps")
    parser.add_argument("--compile", action="store_true", help="add fused+compile cells (torch.compile of the chunk)")
    parser.add_argument("--warmup", type=int, help="warm-up steps per cell (default 2; --tiny 1)")
    parser.add_argument("--steps", type=int, help="timed steps per cell (default 5; --tiny 1)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run (default 420)")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_step.json/.md (default $OUT)")
    args = parser.parse_args(argv)
    args.batch = (4, 64) if args.tiny else (8, 512)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 2)
    args.steps = args.steps if args.steps is not None else (1 if args.tiny else 5)
    return args


def main(argv=None) -> int:
    start = time.perf_counter()
    args = parse(argv)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu (and --tiny) for a smoke test", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    specs = TINY_MODELS if args.tiny else MODELS
    peak_tflops = peak_bf16_tflops(device)
    env = environment(device, matmul_tflops(device, 256 if args.tiny else 1024 if args.cpu else 8192), peak_tflops)
    print(f"# bench/gpu_step.py on {env['device']}: torch {env['torch']}, transformers {env['transformers']}, "
          f"peft {env['peft']}; bf16 matmul {env['matmul_bf16_tflops']:.1f} TFLOP/s measured, "
          f"peak {_fmt(peak_tflops, '.0f')} TFLOP/s; batch {args.batch[0]} x {args.batch[1]}, "
          f"{args.warmup} warm-up + {args.steps} timed steps a cell, budget {args.budget:.0f} s", flush=True)
    verdict = check(next(iter(specs.values())), device)
    for name, errors in verdict["relative_errors"].items():
        print(f"check {name}: relative error loss {errors[0]:.2e}, gradient norm {errors[1]:.2e} "
              f"(tolerance {CHECK_RTOL:g})", flush=True)
    print(f"check: {'PASS' if verdict['ok'] else 'FAIL'}", flush=True)
    deadline = start + args.budget
    cells = [c for name, spec in specs.items() for c in time_model(name, spec, args, device, deadline, peak_tflops)]
    table = markdown(cells)
    report = {"env": env, "args": {k: v for k, v in vars(args).items() if k != "out"}, "check": verdict,
              "cells": cells, "wall_s": time.perf_counter() - start}
    if args.out:
        write_outputs(args.out, report, table)
    print(f"\nwall {report['wall_s']:.0f} s; check {'PASS' if verdict['ok'] else 'FAIL'}")
    for line in target_lines(cells):
        print(line)
    print(table)
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
