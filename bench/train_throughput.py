"""Training throughput: one MOPO step against one DPO (and IPO, SFT) step, and against TRL's DPO.

Run from the repository root (no timed assertions anywhere; it only prints ratios):

    .venv/bin/python bench/train_throughput.py              # full run (~40 s on a quiet 2-CPU machine)
    .venv/bin/python bench/train_throughput.py --quick      # smoke run (~10 s)
    .venv/bin/python bench/train_throughput.py --json out.json

Tokens per second: the prompt + response tokens (eos included, padding excluded) that go
through the policy in a step, over the step's wall time, as a median over the timed steps
after warm-up. A step's wall time is that of ``Trainer.train()`` advanced by one step, so it
includes drawing and encoding the batch; setup (building the task, the models, the trainers,
TRL's dataset mapping) is excluded. The methods take their steps in turn, one round at a time,
so a change in the machine's load hits them alike. DPO and IPO also run a frozen reference
forward on the same tokens; those are not counted again (they are the cost MOPO avoids).

Every method runs through the project's ``Trainer`` (``mopo_core.lm.trainer``) on the
synthetic text task's training pairs (``build_text_task``, no SFT: weights do not change
the cost), from the same initial weights, with the same ``batch_size`` (prompts per step for
MOPO, whose rows are each prompt's distinct responses; pairs per step for the others), on
(a) the tiny word-level GPT (2 layers, 64 dims) and (b) a GPT-2 built from a config
(6 layers, 256 dims, the word tokenizer's vocabulary). "mopo" runs with its defaults, the KL
leash included (its policy samples and start-model forward every 5th step while it does not
pull: mopo_core.lm.trainer.LEASH_CHECK_EVERY); "mopo, no leash" without it (``kl_leash=False``:
no sampling, no reference forward at all). "dpo, matched rows" is DPO with as many
pairs as MOPO has rows / 2, so both push about the same number of sequences through the policy.

When TRL is installed (a bench extra, not a project dependency), ``trl.DPOTrainer`` runs on
the same model, pairs (chosen = the primary's preferred response) and token sequences, same
batch size and step counts, on CPU, without gradient checkpointing, eval, logging or saving.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse
import copy
import json
import os
import platform
import tempfile
import time
import warnings

import numpy as np
import torch
import transformers

from mopo_core.lm.config import TrainConfig
from mopo_core.lm.trainer import Trainer, response_win_rates
from mopo_core.lm.models import build_model
from mopo_core.training.text_task import TextTaskSetup, build_text_task

SEED = 0
BATCH_SIZE = 8
LR = 1e-3
TAU = 0.08
FULL = {"warmup": 3, "steps": 20}
QUICK = {"warmup": 1, "steps": 2}
METHODS = ("mopo", "dpo", "ipo", "sft")


class CountingTrainer(Trainer):
    """The project's Trainer, unchanged, plus counts of the tokens and rows its policy processes
    (read off ``_logprobs``, which every method calls, whatever further arguments it takes; the
    reference's calls are not counted)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens = self.rows = 0

    def _logprobs(self, model, prompts, responses, *args, **kwargs):
        logp, n = super()._logprobs(model, prompts, responses, *args, **kwargs)
        if model is self.model:
            self.tokens += n
            self.rows += len(prompts)
        return logp, n


def _summary(times: list[float], tokens: list[int], rows: list[int], warmup: int) -> dict:
    t, n, r = (np.array(x[warmup:], dtype=float) for x in (times, tokens, rows))
    return {"tokens_per_s": float(np.median(n / t)), "step_ms": 1e3 * float(np.median(t)),
            "tokens_per_step": float(n.mean()), "rows_per_step": float(r.mean()), "timed_steps": int(t.size)}


def mopo_rows(train) -> float:
    """Rows of a MOPO step on average: batch_size prompts times their mean number of distinct responses."""
    tables = response_win_rates(train).values()
    return min(BATCH_SIZE, len(tables)) * float(np.mean([len(t.responses) for t in tables]))


def measure(model, tokenizer, train, runs: dict[str, tuple[str, int]], cfg, with_trl: bool) -> tuple[dict, list]:
    """Time ``runs`` (label -> (method, batch_size)) through ``Trainer.train`` and, ``with_trl``,
    TRL's DPOTrainer. All take their steps in turn (one step each per round; TRL's own loop
    drives the rounds), so a change in the machine's load hits every one alike. Returns the
    summaries and the 1-min load average seen at each round."""
    trainers, samples, loads = {}, {}, []
    for label, (method, batch_size, *extra) in runs.items():
        config = TrainConfig(method=method, thresholds=(0.5,) * (train.n_objectives - 1), tau=TAU, lr=LR, seed=SEED,
                             steps=1, batch_size=batch_size, checkpoint_every=10**9, **(extra[0] if extra else {}))
        trainers[label] = CountingTrainer(copy.deepcopy(model), tokenizer, train, config)
        samples[label] = ([], [], [])

    def one_round():
        loads.append(os.getloadavg()[0])
        for label, trainer in trainers.items():
            trainer.config.steps = trainer.step + 1  # train() goes on from the step it reached: one more step
            times, tokens, rows = samples[label]
            tokens0, rows0, start = trainer.tokens, trainer.rows, time.perf_counter()
            trainer.train()
            times.append(time.perf_counter() - start)
            tokens.append(trainer.tokens - tokens0)
            rows.append(trainer.rows - rows0)

    trl = time_trl(model, tokenizer, train, BATCH_SIZE, cfg, between_steps=one_round) if with_trl else None
    if not with_trl:
        for _ in range(cfg["warmup"] + cfg["steps"]):
            one_round()
    out = {label: {"batch_size": runs[label][1], **_summary(*samples[label], cfg["warmup"])} for label in runs}
    if trl is not None:
        out["trl_dpo"] = {"batch_size": BATCH_SIZE, **trl}
    return out, loads


def time_trl(model, tokenizer, train, batch_size: int, cfg, between_steps) -> dict:
    """trl.DPOTrainer on the same pairs and token sequences ([bos] prompt response [eos]);
    ``between_steps()`` runs after each of its steps, outside its timed intervals."""
    from datasets import Dataset, disable_progress_bars
    from transformers import PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    disable_progress_bars()
    threads = torch.get_num_threads()
    wins = [p.labels[0] >= 0.5 for p in train]
    data = Dataset.from_dict({
        "prompt": [f"{tokenizer.bos_token} {p.prompt} " for p in train],  # TRL adds no bos; the space ends the prompt
        "chosen": [p.response_a if w else p.response_b for p, w in zip(train, wins)],
        "rejected": [p.response_b if w else p.response_a for p, w in zip(train, wins)],
    })
    collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
    batches, times, last = [], [], {}

    def collator(examples):
        batch = collate(examples)
        batches.append((int(batch["attention_mask"].sum()), int(batch["attention_mask"].shape[0])))
        return batch

    class Clock(TrainerCallback):
        """A TRL step: from the end of the previous one (or of our round after it) to its own end."""

        def on_train_begin(self, *args, **kwargs):
            last["t"] = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            times.append(time.perf_counter() - last["t"])
            between_steps()
            last["t"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=batch_size, max_steps=cfg["warmup"] + cfg["steps"],
                         learning_rate=LR, lr_scheduler_type="constant", beta=TAU, max_grad_norm=1.0, seed=SEED,
                         use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
                         logging_strategy="no", save_strategy="no", eval_strategy="no", disable_tqdm=True,
                         dataloader_num_workers=0, dataloader_pin_memory=False)
        trainer = DPOTrainer(copy.deepcopy(model), ref_model=copy.deepcopy(model).eval(), args=args,
                             train_dataset=data, processing_class=tokenizer, data_collator=collator, callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)  # it prints the end-of-training summary
        torch.set_num_threads(threads)  # in case the trainer's setup changed it
        trainer.train()
    # Batches are collated in step order (the loader may run one batch ahead; it never skips).
    steps = batches[: len(times)]
    return _summary(times, [n for n, _ in steps], [r for _, r in steps], cfg["warmup"])


def models(tokenizer, tiny) -> dict:
    special = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")}
    gpt2 = build_model({"model_type": "gpt2", "vocab_size": len(tokenizer), "n_layer": 6, "n_head": 4, "n_embd": 256,
                        "n_positions": 64, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **special},
                       dtype="fp32", device="cpu", seed=SEED)
    return {"tiny_gpt 2x64": tiny, "gpt2 6x256": gpt2}


def markdown(results: dict) -> str:
    lines = ["| model | method | batch | rows/step | tokens/step | step ms | tokens/s | vs our DPO | vs TRL DPO |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        dpo, trl = res["dpo"]["tokens_per_s"], res.get("trl_dpo", {}).get("tokens_per_s")
        for method, r in res.items():
            vs_trl = "-" if trl is None else f"{r['tokens_per_s'] / trl:.2f}x"
            lines.append(f"| {name} | {method} | {r['batch_size']} | {r['rows_per_step']:.1f} | {r['tokens_per_step']:.0f} "
                         f"| {r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / dpo:.2f}x | {vs_trl} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps: a smoke run in well under a minute")
    parser.add_argument("--json", metavar="PATH", help="also save every number to PATH")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")

    def log(msg):
        print(msg, flush=True)

    try:
        import trl
        trl_version = trl.__version__
    except ImportError:
        trl_version = None
    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "trl": trl_version, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "processor": platform.processor() or platform.machine(), "mode": "quick" if args.quick else "full",
           "batch_size": BATCH_SIZE, "warmup_steps": cfg["warmup"], "timed_steps": cfg["steps"], "seed": SEED,
           "load_average_1min_start": os.getloadavg()[0]}
    log(f"# bench/train_throughput.py ({env['mode']}): python {env['python']}, torch {env['torch']}, "
        f"transformers {env['transformers']}, trl {trl_version or 'not installed'}; {env['cpus']} CPUs, "
        f"torch.set_num_threads({args.threads}){' (= os.cpu_count())' if args.threads == os.cpu_count() else ''}; "
        f"batch_size {BATCH_SIZE}; medians over {cfg['steps']} steps after {cfg['warmup']} warm-up steps; "
        f"1-min load average {env['load_average_1min_start']:.2f}")
    wall0 = time.perf_counter()
    _, tokenizer, tiny, (train, _, _) = build_text_task(TextTaskSetup(sft_steps=0, seed=SEED))
    log(f"text task: {len(train)} training pairs, {len(train.prompts())} prompts, vocabulary {len(tokenizer)}")
    matched = round(mopo_rows(train) / 2)
    log(f"MOPO at batch_size {BATCH_SIZE} averages {2 * matched} rows a step: "
        f"DPO with matched rows uses batch_size {matched}")
    results, load_ranges = {}, {}
    for name, model in models(tokenizer, tiny).items():
        n_params = sum(p.numel() for p in model.parameters())
        log(f"\n## {name} ({n_params / 1e6:.2f} M parameters)")
        runs = ({m: (m, BATCH_SIZE) for m in METHODS} | {"mopo, no leash": ("mopo", BATCH_SIZE, {"kl_leash": False})}
                | {"dpo, matched rows": ("dpo", matched)})
        res, loads = measure(model, tokenizer, train, runs, cfg, with_trl=trl_version is not None)
        results[name] = res
        load_ranges[name] = (min(loads), max(loads))
        for method, r in res.items():
            log(f"  {method:18s} batch {r['batch_size']:2d}: {r['rows_per_step']:5.1f} rows, "
                f"{r['tokens_per_step']:6.0f} tokens/step, step {r['step_ms']:7.1f} ms, {r['tokens_per_s']:8.0f} tokens/s")
        mopo, dpo = res["mopo"]["tokens_per_s"], res["dpo"]["tokens_per_s"]
        log(f"  MOPO / DPO tokens/s: {mopo / dpo:.2f}x (same batch_size), "
            f"{mopo / res['dpo, matched rows']['tokens_per_s']:.2f}x (DPO with matched rows)")
        if trl_version:
            trl_tps = res["trl_dpo"]["tokens_per_s"]
            log(f"  vs TRL DPOTrainer tokens/s: our DPO {dpo / trl_tps:.2f}x, our MOPO {mopo / trl_tps:.2f}x, "
                f"MOPO without the leash {res['mopo, no leash']['tokens_per_s'] / trl_tps:.2f}x")
        else:
            log("  TRL not installed: skipped")
        log(f"  1-min load average during the rounds: {load_ranges[name][0]:.2f} to {load_ranges[name][1]:.2f}")
    env["load_average_1min_end"] = os.getloadavg()[0]
    report = {"env": env, "results": results, "load_average_1min_range": load_ranges,
              "wall_s": time.perf_counter() - wall0}
    log(f"\nwall time {report['wall_s']:.1f} s; torch threads at the end: {torch.get_num_threads()}; "
        f"1-min load average at the end {env['load_average_1min_end']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        log(f"saved {args.json}")
    log("\n" + markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
