"""Models: the registered checkpoints (the built-in tiny model, SmolLM2 once fetched, any checkpoint
folder in the models folder) with their size and the memory one training step would need; load
one, sample from it or chat with it, score its samples; unload it and see the memory come back.

A thin view: loading, unloading, the vocabulary checks and scoring live in the engine module
:mod:`app.presenters.models` (no Streamlit there); this page holds the widgets, the session
state, the caches (``st.cache_*``) and the memory log.

One model is loaded at a time, kept in ``st.session_state["models_loaded"]`` (this browser
session's model, not shared between sessions; the fields of
:class:`app.presenters.models.LoadedModel` as a dict). Loading another first unloads it through
:func:`app.presenters.models.unload_model` (its tensors are emptied in place, so nothing that
still refers to the model keeps its memory alive). Every load and unload is measured (process RSS
before and after, CUDA memory allocated and reserved) and listed in the memory log, so a leak
when switching models would show as RSS that does not come back.

A policy trained on the Train page (a finished, cancelled or diverged train run of the run store
with a checkpoint) is loaded beside its reference by :func:`app.presenters.models.load_trained_policy`
(kept in ``st.session_state["models_trained"]``, apart from the loaded model above) and sampled
side by side: the same prompt, seed and temperature to both, each response scored (the text
task's scorers; a dataset run's own judge).
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pandas as pd
import streamlit as st
import torch

from app.shared import EMPTY, export_buttons, run_store, show_table
from mopo_core.lm import registry
from app.presenters import models as models_presenter
from mopo_core.lm.checkpoints import available_memory, estimate_training_memory
from mopo_core.lm.memory import MemoryUse, memory_use
from mopo_core.lm.devices import resolve_device
from mopo_core.lm.lora import LoraSettings
from mopo_core.lm.models import sample

LOADED = "models_loaded"
LOG = "models_memory_log"
RESULT = "models_result"
CHAT = "models_chat"
NOTICE = "models_notice"
TRAINED = "models_trained"
TRAINED_RESULT = "models_trained_result"
TRAINED_FAILED = "models_trained_failed"
TEXT_TASK = "text-task scorers"
#: Prompts offered as examples (the text task's; written with its vocabulary, so the tiny model knows every word).
N_EXAMPLES = 12
PARTS = ("parameters", "optimizer", "reference", "activations", "logits", "head_gradient", "leash_kl", "gradients",
         "update")
#: The breakdown's column headers and tooltips, by part (the exports keep the part names).
PART_LABELS = {
    "parameters": ("weights", "The model's weights in the training dtype (parameters)."),
    "gradients": ("gradients", "One gradient per trained weight (LoRA: the adapters' only)."),
    "optimizer": ("optimizer state", "AdamW's two moments per trained weight, in its dtype (fp32 for LoRA adapters) "
                                     "(optimizer)."),
    "activations": ("activations", "What backward needs from the forward pass, per layer (less with gradient "
                                   "checkpointing)."),
    "logits": ("logits", "The output scores over the vocabulary for every token of the batch, and their "
                         "gradient."),
    "reference": ("reference copy", "Frozen copies of the weights: DPO/IPO's reference model, the start offline "
                                    "MOPO's leash measures from (reference)."),
    "head_gradient": ("head gradient", "Full fine-tuning with the log-softmax in chunks: the output layer's gradient "
                                       "from the first chunk, alive while the next chunks run (head_gradient)."),
    "leash_kl": ("KL leash", "Offline MOPO's KL leash: its per-token KL to the starting model keeps three float32 "
                             "tensors over the vocabulary per response token of the leash's sampled rows until "
                             "backward (leash_kl); their activations count with the others."),
    "update": ("step temporaries", "Two tensors the size of the largest trained weight, alive at the end of "
                                   "backward and in the optimizer step (a tied embedding's gradients being summed) "
                                   "(update)."),
}


# ----------------------------------------------------------------------------- formatting


def fmt_bytes(n, signed: bool = False) -> str:
    """Bytes as KiB/MiB/GiB (binary units); "–" for None."""
    if n is None:
        return EMPTY
    sign = ("+" if n > 0 else "−" if n < 0 else "±") if signed else ("−" if n < 0 else "")
    a = abs(n)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if a >= size:
            return f"{sign}{a / size:.2f} {unit}"
    return f"{sign}{a} B"


def fmt_count(n) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


# ----------------------------------------------------------------------------- cached engine calls


@st.cache_resource(show_spinner=False)
def builtin_model_config():
    """The built-in tiny model's transformers config (the untrained model is built once: it is tiny)."""
    from mopo_core.lm.models import tiny_gpt, word_tokenizer
    from synthetic.text_task import vocabulary

    return tiny_gpt(len(word_tokenizer(vocabulary()))).config


@st.cache_data(show_spinner=False)
def example_prompts() -> list[str]:
    from synthetic.text_task import TextTask

    return [p.text for p in TextTask(n_prompts=N_EXAMPLES, seed=1).prompts()]


@st.cache_data(show_spinner=False, max_entries=512)
def training_estimate(path: str | None, stamp: float, batch: int, seq_len: int, dtype: str, lora_r: int,
                      checkpointing: bool, reference_copy: bool, leash_rows: int = 0) -> dict:
    """Bytes per part of one training step (``path`` None: the built-in model); ``stamp`` is the
    config's modification time (a changed checkpoint is estimated again)."""
    source = builtin_model_config() if path is None else path
    est = estimate_training_memory(source, batch, seq_len, dtype, LoraSettings(r=lora_r) if lora_r else None,
                                   gradient_checkpointing=checkpointing, reference_copies=int(reference_copy),
                                   leash_rows=leash_rows)
    return {"total": est.total, **{p: getattr(est, p) for p in PARTS}}


@st.cache_resource(show_spinner="Loading the preference model (its encoder and heads)…", max_entries=1)
def preference_model(folder: str, stamp: float):
    from mopo_core.lm.judge import PreferenceModel

    return PreferenceModel.load(folder)


def _stamp(path: str | os.PathLike | None, name: str = "config.json") -> float:
    try:
        return os.stat(Path(path) / name).st_mtime if path is not None else 0.0
    except OSError:
        return 0.0


# ----------------------------------------------------------------------------- load / unload


def _log(action: str, name: str, before: MemoryUse, after: MemoryUse, seconds: float | None = None):
    st.session_state.setdefault(LOG, []).append({
        "action": action, "model": name, "seconds": None if seconds is None else round(seconds, 2),
        "RSS before": fmt_bytes(before.rss), "RSS after": fmt_bytes(after.rss),
        "RSS change": fmt_bytes(None if before.rss is None or after.rss is None else after.rss - before.rss, True),
        "CUDA allocated after": fmt_bytes(after.cuda_allocated), "CUDA reserved after": fmt_bytes(after.cuda_reserved),
        "rss_before_bytes": before.rss, "rss_after_bytes": after.rss,
    })


def unload_current() -> models_presenter.Unloaded | None:
    """Unload the loaded model (if any, :func:`app.presenters.models.unload_model`), drop every
    reference the page holds (its samples, chat, tokenizer, the cached preference model); log
    and return what was freed."""
    loaded = st.session_state.pop(LOADED, None)
    if loaded is None:
        return None
    st.session_state.pop(RESULT, None)
    st.session_state.pop(CHAT, None)

    def release():
        loaded.pop("tokenizer", None)
        preference_model.clear()  # the scorer's encoder goes too: nothing of this model's session stays loaded

    freed = models_presenter.unload_model(loaded.pop("model"), loaded["name"], loaded["after"].rss, release)
    _log("unload", freed.name, freed.before, freed.after)
    return freed


def freed_text(f: models_presenter.Unloaded) -> str:
    cuda = (f" · CUDA allocated {fmt_bytes(f.cuda_allocated_freed)}, reserved {fmt_bytes(f.cuda_reserved_freed)}"
            " freed" if f.cuda_allocated_freed or f.cuda_reserved_freed else "")
    small = (" A model this small lives in the memory allocator's pools, which the process keeps for reuse, so "
             "RSS barely moves." if f.rss_freed is not None and f.rss_freed < 2**20 else "")
    return (f"Unloaded **{f.name}**: freed {fmt_bytes(f.rss_freed)} of process memory (RSS "
            f"{fmt_bytes(f.rss_before)} → {fmt_bytes(f.rss_after)}){cuda}.{small}")


def load(entry: registry.ModelEntry, dtype: str, device: str, progress) -> dict:
    """Load ``entry`` (:func:`app.presenters.models.load_entry`), log it; the session-state dict."""
    loaded = models_presenter.load_entry(entry, dtype, device, progress)
    _log("load", loaded.name, loaded.before, loaded.after, loaded.seconds)
    return loaded.as_dict()


def score_samples(scorer: str, prompt: str, responses: list[str], root: Path) -> tuple[pd.DataFrame, str]:
    """Per-objective scores of ``responses`` to ``prompt`` by ``scorer`` (the text-task scorers or
    a preference model's name in ``root``'s prefmodels folder) and a sentence saying what they are."""
    if scorer == TEXT_TASK:
        return models_presenter.score_samples(prompt, responses)
    folder = root / registry.PREFMODELS_DIR / scorer
    judge = preference_model(str(folder), _stamp(folder, "preference_model.json"))
    return models_presenter.score_samples(prompt, responses, judge, scorer)


# ----------------------------------------------------------------------------- page

st.title("Models: checkpoints, memory, sampling")
root = registry.models_dir()
if NOTICE in st.session_state:
    kind, text = st.session_state.pop(NOTICE)
    getattr(st, kind)(text)

with st.sidebar:
    st.subheader("Training settings (for the memory estimate)")
    batch = st.number_input("Batch size (sequences per step)", 1, 4096, 8, key="models_batch")
    seq_len = st.number_input("Sequence length (tokens)", 1, 32768, 256, step=64, key="models_seq_len")
    train_dtype = st.selectbox("Training dtype", ["bf16", "fp32", "fp16"], key="models_train_dtype")
    use_lora = st.toggle("LoRA adapters (rank 8)", value=True, key="models_lora",
                         help="Only the adapters train: no gradients or optimizer state for the base weights.")
    checkpointing = st.toggle("Gradient checkpointing", value=False, key="models_checkpointing",
                              help="Recompute each layer's activations in backward instead of keeping them.")
    reference_copy = st.toggle("Frozen reference copy (DPO/IPO)", value=False, key="models_reference_copy")
    leash_rows = st.number_input("KL leash rows (offline MOPO)", 0, 4096, 0, key="models_leash_rows",
                                 help="Offline MOPO's KL leash scores one sampled response per prompt in the same "
                                      "step: the prompts per step (0: no leash). Their whole length is counted as "
                                      "response tokens; the leash also needs the starting model's frozen copy.")

try:
    entries = registry.list_models()
except ValueError as exc:  # an unreadable registry.json
    st.error(str(exc))
    entries = [registry.builtin_entry()]
device = resolve_device("auto")
try:
    free = available_memory(device)
except RuntimeError:
    free = None

st.caption(f"Models folder: `{root}` (set `${registry.MODELS_ENV}` to use another). The built-in model needs no "
           f"checkpoint: it is fitted on its first load (a progress bar follows it) and cached in "
           f"`{registry.CACHE_DIR}/`, so later loads take about a second; "
           "checkpoint folders (config.json + safetensors) directly inside the folder are found by themselves, "
           "nested ones are added below. SmolLM2-135M-Instruct: `python -m mopo_core models fetch-smollm2`.")
rows, breakdown_rows = [], []
for e in entries:
    estimate = None
    if e.problem is None:
        try:
            estimate = training_estimate(e.path, _stamp(e.path), int(batch), int(seq_len), train_dtype,
                                         8 if use_lora else 0, checkpointing, reference_copy, int(leash_rows))
        except (ValueError, OSError, RuntimeError) as exc:
            e = registry.ModelEntry(**{**e.to_dict(), "problem": f"cannot estimate its memory: {exc}"})
    total = None if estimate is None else estimate["total"]
    rows.append({
        "name": e.name, "kind": e.kind, "architecture": e.architecture, "parameters": fmt_count(e.n_parameters),
        "dtype": e.dtype, "training memory": fmt_bytes(total),
        "fits now": EMPTY if total is None or free is None else "yes" if total <= free else "no",
        "problem": e.problem or "",
        "path": e.path or "(built in)", "source": e.source, "registered": "yes" if e.registered else "no",
        "n_parameters": e.n_parameters, "estimate_bytes": total,
    })
    if estimate is not None:
        breakdown_rows.append({"name": e.name, **{p: fmt_bytes(estimate[p]) if estimate[p] else "–" for p in PARTS},
                               "total": fmt_bytes(total), **{f"{p}_bytes": estimate[p] for p in PARTS}})
table = pd.DataFrame(rows)
st.subheader("Registered models")
st.caption(f"*Memory per training step*: one step at batch {batch} × {seq_len} tokens in {train_dtype}"
           f"{', LoRA r=8' if use_lora else ', full fine-tune'}{', gradient checkpointing' if checkpointing else ''}"
           f"{', with a frozen reference copy' if reference_copy else ''}"
           f"{f', {leash_rows} KL leash rows' if leash_rows else ''} (AdamW; change it in the sidebar). "
           f"*Fits now?*: within the {fmt_bytes(free)} available on {device} at this moment. *Problem*: why a "
           "checkpoint cannot be loaded (empty when it can). Hover a column's header for what it holds.")
show_table(table, "models_registry", column_config={
    "name": st.column_config.TextColumn("name", pinned=True),
    "kind": st.column_config.TextColumn(help="builtin: the text task's tiny GPT-2 (fitted on its first load); "
                                             "checkpoint: a folder with config.json and safetensors weights."),
    "architecture": st.column_config.TextColumn(help="The transformers model class (config.json's architectures)."),
    "parameters": st.column_config.TextColumn(help="Number of weights (k: thousand, M: million, B: billion); the "
                                                   "exact count (n_parameters) is in the exports."),
    "dtype": st.column_config.TextColumn("stored as", help="The weights' data type in the checkpoint (torch dtype): "
                                                           "float32 takes 4 bytes a weight, bfloat16 2."),
    "training memory": st.column_config.TextColumn(
        "memory per training step", help="Estimated peak memory of one AdamW training step with the sidebar's "
                                         "settings (estimate_training_memory); the bytes (estimate_bytes) are in "
                                         "the exports."),
    "fits now": st.column_config.TextColumn("fits now?", help="Whether that estimate fits in the memory available "
                                                              "on this device at this moment."),
    "problem": st.column_config.TextColumn(help="Why the checkpoint cannot be loaded (empty when it can)."),
    "path": st.column_config.TextColumn(help="The checkpoint folder."),
    "source": st.column_config.TextColumn(help="Where the entry came from (built in, fetched, added, found)."),
    "registered": st.column_config.TextColumn(help="Whether registry.json lists it (else it was found in the "
                                                   "models folder by itself)."),
    "n_parameters": None, "estimate_bytes": None},
    column_order=["name", "parameters", "training memory", "fits now", "problem", "dtype", "architecture", "kind",
                  "path", "source", "registered"])  # what decides a choice first; the exact numbers in the exports
if breakdown_rows:
    with st.expander("Training memory breakdown: what one step needs, part by part", expanded=False):
        st.caption("One row per model, one column per part of the training step estimated above (– : none, e.g. no "
                   "reference copy, or no gradients for frozen base weights under LoRA). The total is the step's "
                   "peak, not the columns' sum: weights + optimizer state + reference copies + the larger of the "
                   "backward pass (activations + logits + head gradient + KL leash) and the update (gradients + step "
                   "temporaries). The byte columns are in the exported data.")
        show_table(pd.DataFrame(breakdown_rows), "models_memory_breakdown", column_config={
            "name": st.column_config.TextColumn("name", pinned=True),
            **{p: st.column_config.TextColumn(label, help=text) for p, (label, text) in PART_LABELS.items()},
            "total": st.column_config.TextColumn(help="The estimated peak of one training step (the caption says "
                                                      "how the parts combine)."),
            **{f"{p}_bytes": None for p in PARTS}})

with st.expander("Add a checkpoint folder from the models folder"):
    st.caption(f"A folder inside `{root}` holding config.json and safetensors weights of a causal LM. Folders "
               "elsewhere are refused: copy or move them into the models folder first.")
    new_path = st.text_input("Checkpoint folder", key="models_add_path", placeholder=str(root / "my-checkpoint"))
    if st.button("Add to the registry", key="models_add"):
        try:
            added = registry.register(new_path.strip(), source="added on the Models page")
        except (ValueError, FileNotFoundError) as exc:
            st.error(str(exc))
        else:
            st.session_state[NOTICE] = ("success", f"Registered **{added.name}**: {added.architecture}, "
                                                   f"{fmt_count(added.n_parameters)} parameters, {added.dtype}.")
            st.rerun()

# ----------------------------------------------------------------------------- load

st.subheader("Load a model")
usable = [e for e in entries if e.problem is None]
loaded = st.session_state.get(LOADED)
names = [e.name for e in usable]
cols = st.columns([3, 1, 1, 1])
choice = cols[0].selectbox("Model", names, key="models_choice")
dtype = cols[1].selectbox("dtype", ["auto", "fp32", "bf16", "fp16"], key="models_dtype",
                          help="auto: bf16 on a GPU; on the CPU bf16 for a model over 1B parameters (or whose fp32 "
                               "weights would take over a quarter of the available memory), else fp32.")
devices = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
target = cols[2].selectbox("Device", devices, key="models_device")
cols[3].write("")
clicked = cols[3].button("Load", key="models_load", type="primary", width="stretch")
if clicked:
    entry = next(e for e in usable if e.name == choice)
    switched = unload_current()
    with st.status(f"Loading {entry.name}…", expanded=True) as status:
        if switched is not None:
            st.write(freed_text(switched) + " (one model at a time)")
        bar = st.progress(0.0, text="Starting…")
        try:
            st.session_state[LOADED] = load(entry, dtype, target, lambda f, text: bar.progress(f, text=text))
        except (ValueError, MemoryError, OSError, RuntimeError) as exc:
            status.update(label=f"Could not load {entry.name}", state="error")
            st.error(str(exc))
        else:
            status.update(label=f"Loaded {entry.name} in {st.session_state[LOADED]['seconds']:.1f} s", state="complete",
                          expanded=False)
    if switched is not None:
        st.info(freed_text(switched) + " Only one model is kept loaded.")
    loaded = st.session_state.get(LOADED)

memory_row = st.container()  # filled at the end of the script, after any sampling

if loaded is None:
    st.info("No model loaded. Pick one above and press Load.")
else:
    b, a = loaded["before"], loaded["after"]
    st.success(f"Loaded **{loaded['name']}** on {loaded['device']} in {loaded['dtype']} "
               f"({fmt_count(loaded['parameters'])} parameters) in {loaded['seconds']:.1f} s · RSS {fmt_bytes(b.rss)} → "
               f"{fmt_bytes(a.rss)} ({fmt_bytes(None if a.rss is None or b.rss is None else a.rss - b.rss, True)})"
               + (f" · CUDA allocated {fmt_bytes(a.cuda_allocated)}" if a.cuda_allocated else ""))
    if loaded["kind"] == "checkpoint" and loaded["device"] == "cpu":
        st.caption("On the CPU, safetensors weights already in the chosen dtype are memory-mapped: they count in RSS "
                   "only once read (the first generation reads them), and unloading gives them back.")
    if st.button("Unload", key="models_unload"):
        freed = unload_current()
        st.session_state[NOTICE] = ("success", freed_text(freed))
        st.rerun()

log_box = st.container()  # the memory log, filled at the end of the script (after the run's policy below)

# ----------------------------------------------------------------------------- generate

if loaded is not None:
    tokenizer = loaded["tokenizer"]
    model = loaded["model"]
    templated = bool(getattr(tokenizer, "chat_template", None))
    prefs = registry.list_prefmodels(root)
    st.subheader(f"Sample from {loaded['name']}")
    scorers = [TEXT_TASK, *(p.name for p in prefs)]
    default_scorer = 1 if prefs and loaded["kind"] != "builtin" else 0
    scorer = st.selectbox("Score the samples with", scorers, index=default_scorer, key="models_scorer",
                          help=f"Preference models are read from {root / registry.PREFMODELS_DIR}.")
    if not prefs:
        st.caption(f"No preference model available: none saved in `{root / registry.PREFMODELS_DIR}` (train one with "
                   f"`python -m mopo_core prefmodel train --data FILE --out {root / registry.PREFMODELS_DIR}/NAME`). "
                   "The text task's programmatic scorers are used.")
    sample_tab, chat_tab = st.tabs(["Sample several responses", "Chat"])
    with sample_tab:
        examples = list(dict.fromkeys([*loaded["prompts"][:N_EXAMPLES], *example_prompts()]))

        def _use_example():
            st.session_state["models_prompt"] = st.session_state["models_example"]

        st.selectbox("Example prompts (the text task's)", examples, key="models_example", on_change=_use_example)
        st.session_state.setdefault("models_prompt", examples[0])
        prompt = st.text_area("Prompt", key="models_prompt", height=80)
        c = st.columns(5)
        n = c[0].number_input("Samples", 1, 32, 4, key="models_n")
        max_new = c[1].number_input("Max new tokens", 1, 512, 16 if models_presenter.word_level(tokenizer) else 48,
                                    key="models_max_new")
        temperature = c[2].number_input("Temperature (0: greedy)", 0.0, 5.0, 1.0, 0.1, key="models_temperature")
        seed = c[3].number_input("Seed", 0, 1_000_000, 0, key="models_seed")
        as_chat = c[4].toggle("Chat template", value=templated, disabled=not templated, key="models_as_chat",
                              help="Wrap the prompt as one user turn in the tokenizer's chat template.")
        unknown = models_presenter.unknown_words(tokenizer, prompt)
        if unknown:
            st.warning(f"Not in {loaded['name']}'s vocabulary (read as <unk>): {', '.join(unknown)}. Its vocabulary is "
                       "the text task's words; pick an example prompt.")
        if st.button("Sample", key="models_sample", type="primary"):
            text = registry.format_prompt(tokenizer, prompt) if as_chat and templated else prompt
            with st.spinner(f"Sampling {n} response(s)…"):
                start = time.perf_counter()
                responses = sample(model, tokenizer, [text], n=int(n), max_new_tokens=int(max_new),
                                   temperature=float(temperature), seed=int(seed))
            st.session_state[RESULT] = {"prompt": prompt, "responses": responses, "model": loaded["name"],
                                        "seconds": time.perf_counter() - start, "chat": bool(as_chat and templated)}
        result = st.session_state.get(RESULT)
        if result is not None:
            st.markdown(f"**{len(result['responses'])} sample(s)** from {result['model']} in {result['seconds']:.1f} s "
                        f"for: _{result['prompt']}_" + (" (as a chat turn)" if result["chat"] else ""))
            try:
                scores, note = score_samples(scorer, result["prompt"], result["responses"], root)
            except (ValueError, OSError, RuntimeError) as exc:
                st.error(f"Scoring with {scorer} failed: {exc}")
                scores, note = pd.DataFrame(index=range(len(result["responses"]))), ""
            frame = pd.concat([pd.DataFrame({"sample": range(1, len(result["responses"]) + 1),
                                             "response": result["responses"]}), scores], axis=1)
            shown = frame.set_index("sample").rename_axis("#")
            st.table(shown.style.format({c: "{:.3f}" for c in scores.columns}, na_rep="–"))  # wraps long responses
            export_buttons(frame, "models_samples")
            if len(scores.columns):
                st.caption("Mean: " + " · ".join(f"{c} {scores[c].mean():.3f}" for c in scores.columns) + ". " + note)
    with chat_tab:
        history = st.session_state.setdefault(CHAT, [])
        st.caption("The whole conversation goes through the tokenizer's chat template." if templated else
                   f"{loaded['name']} has no chat template: each message is answered on its own (a plain prompt).")
        for turn in history:
            with st.chat_message(turn["role"]):
                st.write(turn["content"] or "(empty reply)")
        message = st.chat_input(f"Message {loaded['name']}", key="models_chat_input")
        if message:
            history.append({"role": "user", "content": message})
            if templated:
                text = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
            else:
                text = message
            with st.spinner("Generating…"):
                reply = sample(model, tokenizer, [text], n=1, max_new_tokens=int(st.session_state["models_max_new"]),
                               temperature=float(st.session_state["models_temperature"]), seed=len(history))[0]
            history.append({"role": "assistant", "content": reply})
            st.rerun()
        if history and st.button("Clear the chat", key="models_chat_clear"):
            st.session_state[CHAT] = []
            st.rerun()

# ----------------------------------------------------------------------------- a finished run's policy


def unload_trained() -> models_presenter.Unloaded | None:
    """Unload the finished run's policy and reference (if loaded), drop its samples; log it."""
    trained = st.session_state.pop(TRAINED, None)
    st.session_state.pop(TRAINED_RESULT, None)
    if trained is None:
        return None
    freed = models_presenter.unload_trained(trained)
    _log("unload", freed.name, freed.before, freed.after)
    return freed


def _response_table(responses: list[str], scores: pd.DataFrame):
    frame = pd.concat([pd.DataFrame({"sample": range(1, len(responses) + 1), "response": responses}), scores], axis=1)
    st.table(frame.set_index("sample").rename_axis("#").style.format({c: "{:.3f}" for c in scores.columns},
                                                                     na_rep="–"))
    if len(scores.columns):
        st.caption("Mean: " + " · ".join(f"{c} {scores[c].mean():.3f}" for c in scores.columns))


st.subheader("Policy from a finished run")
store = run_store()
try:
    finished_runs = models_presenter.trained_policies(store)
except (OSError, ValueError, sqlite3.Error) as exc:
    st.error(f"Cannot list the train runs of {store.path}: {exc}")
    finished_runs = []
by_id = {r.run_id: r for r in finished_runs}
if TRAINED in st.session_state and st.session_state[TRAINED].run.run_id not in by_id:
    by_id[st.session_state[TRAINED].run.run_id] = st.session_state[TRAINED].run  # e.g. its folder was moved since
if not by_id:
    st.info(f"No finished, cancelled or diverged train run with a checkpoint in the run store `{store.path}`. Train "
            "one on the Train page with a checkpoint folder: its policy can then be sampled here beside its reference.")
else:
    st.caption("A train run's policy, read from its checkpoint (`last.pt`, tensors only), and the reference it was "
               "trained against, loaded side by side (a text-task run on the CPU, a dataset run as its setup says): the same prompt, seed and "
               "temperature go to both.")
    chosen = st.selectbox("Policy from a finished run", list(by_id), format_func=lambda i: by_id[i].label,
                          index=None, placeholder="Choose a run…", key="models_trained_choice")
    trained = st.session_state.get(TRAINED)
    failed = st.session_state.get(TRAINED_FAILED)
    if chosen is None and trained is not None:  # the choice was cleared: nothing of that run stays loaded
        st.info(freed_text(unload_trained()))
        trained = None
    if chosen is not None and (trained is None or trained.run.run_id != chosen) and \
            (failed is None or failed[0] != chosen):
        switched = unload_trained()
        st.session_state.pop(TRAINED_FAILED, None)
        with st.status(f"Loading run {chosen}'s policy and its reference…", expanded=True) as status:
            bar = st.progress(0.0, text="Starting…")
            try:
                trained = models_presenter.load_trained_policy(store, chosen,
                                                               lambda f, text: bar.progress(f, text=text))
            except (ValueError, OSError, RuntimeError, MemoryError) as exc:
                status.update(label=f"Could not load run {chosen}'s policy", state="error")
                st.session_state[TRAINED_FAILED] = (chosen, str(exc))
                trained = None
            else:
                st.session_state[TRAINED] = trained
                _log("load", f"run {chosen} policy + reference", trained.before, trained.after, trained.seconds)
                status.update(label=f"Loaded run {chosen}'s policy in {trained.seconds:.1f} s", state="complete",
                              expanded=False)
        if switched is not None:
            st.info(freed_text(switched))
    failed = st.session_state.get(TRAINED_FAILED)
    if failed is not None and failed[0] == chosen:
        st.error(failed[1])
    if trained is not None:
        run = trained.run
        b, a = trained.before, trained.after
        st.success(f"Loaded **run {run.run_id}**'s policy ({run.method}, {run.status}, checkpoint step {trained.step}) "
                   f"and its reference in {trained.seconds:.1f} s · RSS {fmt_bytes(b.rss)} → {fmt_bytes(a.rss)}")
        if trained.prompts:
            def _use_trained_example():
                st.session_state["models_trained_prompt"] = st.session_state["models_trained_example"]

            st.selectbox("Example prompts (the run's held-out test prompts)", trained.prompts[:N_EXAMPLES],
                         key="models_trained_example", on_change=_use_trained_example)
            st.session_state.setdefault("models_trained_prompt", trained.prompts[0])
        trained_prompt = st.text_area("Prompt for both", key="models_trained_prompt", height=80)
        c = st.columns(4)
        t_n = c[0].number_input("Samples each", 1, 16, 3, key="models_trained_n")
        t_max = c[1].number_input("Max new tokens", 1, 512, 16 if models_presenter.word_level(trained.tokenizer)
                                  else 48, key="models_trained_max_new")
        t_temp = c[2].number_input("Temperature (0: greedy)", 0.0, 5.0, 1.0, 0.1, key="models_trained_temperature")
        t_seed = c[3].number_input("Seed", 0, 1_000_000, 0, key="models_trained_seed")
        unknown = models_presenter.unknown_words(trained.tokenizer, trained_prompt)
        if unknown:
            st.warning(f"Not in the run's vocabulary (read as <unk>): {', '.join(unknown)}. Pick an example prompt.")
        b1, b2 = st.columns([1, 4])
        if b1.button("Sample both", key="models_trained_sample", type="primary"):
            with st.spinner("Sampling from the policy and the reference…"):
                start = time.perf_counter()
                both = models_presenter.sample_both(trained, trained_prompt, int(t_n), int(t_max), float(t_temp),
                                                    int(t_seed))
                scored = {}
                for side, responses in both.items():
                    try:
                        scored[side] = trained.score(trained_prompt, responses)
                    except (ValueError, OSError, RuntimeError) as exc:
                        scored[side] = (pd.DataFrame(index=range(len(responses))), f"Scoring failed: {exc}")
            st.session_state[TRAINED_RESULT] = {"prompt": trained_prompt, "responses": both, "scores": scored,
                                                "seconds": time.perf_counter() - start, "seed": int(t_seed),
                                                "temperature": float(t_temp)}
        if b2.button("Unload the run's policy", key="models_trained_unload"):
            freed = unload_trained()
            st.session_state.pop("models_trained_choice", None)
            st.session_state[NOTICE] = ("success", freed_text(freed))
            st.rerun()
        result = st.session_state.get(TRAINED_RESULT)
        if result is not None:
            st.markdown(f"Seed {result['seed']}, temperature {result['temperature']:g}, "
                        f"{result['seconds']:.1f} s, for: _{result['prompt']}_")
            left, right = st.columns(2)
            for col, side, title in ((left, "policy", f"Policy: run {run.run_id} ({run.method}, step {trained.step})"),
                                     (right, "reference", "Reference (what it was trained from)")):
                with col:
                    st.markdown(f"**{title}**")
                    _response_table(result["responses"][side], result["scores"][side][0])
            note = result["scores"]["policy"][1]
            if note:
                st.caption(note)
            export_buttons(pd.DataFrame([{"model": side, "sample": i + 1, "response": r,
                                          **result["scores"][side][0].iloc[i].to_dict()}
                                         for side in ("policy", "reference")
                                         for i, r in enumerate(result["responses"][side])]), "models_trained_samples")

# ----------------------------------------------------------------------------- memory now (after everything above ran)

if st.session_state.get(LOG):
    with log_box.expander("Memory log: every load and unload of this session", expanded=False):
        log = pd.DataFrame(st.session_state[LOG])
        show_table(log, "models_memory_log", readable=True,
                   column_config={"seconds": st.column_config.Column(help="Wall time of the load (– : an unload)."),
                                  "rss_before_bytes": None, "rss_after_bytes": None})

mem = memory_use()
gpu = torch.cuda.is_available()
m = memory_row.columns(4)
m[0].metric("Process memory (RSS) now", fmt_bytes(mem.rss), help="Resident set size of the server process (all "
            "sessions), measured at the end of this page's run.")
m[1].metric("CUDA allocated now", fmt_bytes(mem.cuda_allocated) if gpu else "no GPU")
m[2].metric("CUDA reserved now", fmt_bytes(mem.cuda_reserved) if gpu else "no GPU")
m[3].metric(f"Available on {device}", fmt_bytes(free))
