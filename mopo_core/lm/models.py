"""Language models: word-level tokenizers, tiny GPTs, SFT, loading and saving local checkpoints
(optionally wrapped with LoRA adapters, :mod:`mopo_core.lm.lora`), sampling.

Nothing here downloads: checkpoints are local directories (safetensors, or weights-only
pickles; see :mod:`mopo_core.lm.checkpoints`), tokenizers are built with the ``tokenizers``
library or loaded from a local folder.

Sequence convention (shared by :func:`train_sft`, :func:`sample` and any trainer that
scores ``log pi(y | x)``): a text is encoded as ``[bos] + words (+ [eos])``, with ``bos``
only where the tokenizer asks for one (:func:`asks_for_bos`; Qwen2.5's names a bos but never
adds it) and not when the text already begins with the bos token's text (a prompt written by
a chat template that opens with it, as SmolLM2's ``<|im_start|>``), ``eos`` left out when the
tokenizer has none; a prompt is encoded without ``eos`` and its
response's tokens (ending in ``eos``) follow it. See :func:`sequence_ids`.
"""
from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from mopo_core.lm import checkpoints
from mopo_core.lm.checkpoints import as_config, existing_directory, one_line, read_json_object
from mopo_core.lm.devices import resolve_device, resolve_dtype, seeded
from mopo_core.lm.lora import LoraSettings, apply_lora
from mopo_core.lm.registry import apply_umask
from mopo_core.validation import check_int, check_nonnegative

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}


# ---------------------------------------------------------------------------- tokenizers


def word_tokenizer(vocabulary: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: one id per word, split on whitespace, ids 0-3 for
    ``<pad> <bos> <eos> <unk>`` and the words after them in the given order.

    Texts of single-space-separated vocabulary words round-trip exactly through
    ``encode``/``decode``; ``save_pretrained`` / :func:`load_tokenizer` work offline.
    """
    words = list(vocabulary)
    specials = list(SPECIAL_TOKENS.values())
    for i, word in enumerate(words):
        if not isinstance(word, str) or not word or len(word.split()) != 1 or word != word.strip():
            raise ValueError(f"vocabulary[{i}]: must be one non-empty word without spaces, got {word!r}")
        if word in specials:
            raise ValueError(f"vocabulary[{i}]: {word!r} is a reserved special token")
    if len(set(words)) != len(words):
        raise ValueError("vocabulary: contains repeated words")
    vocab = {token: i for i, token in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, clean_up_tokenization_spaces=False, **SPECIAL_TOKENS
    )


#: The JSON files a tokenizer folder may hold that transformers reads as objects.
TOKENIZER_JSON_FILES = ("config.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")


def load_tokenizer(path: str | os.PathLike):
    """A tokenizer saved with ``save_pretrained`` in a local folder (no download, no repository code).

    Raises ``FileNotFoundError`` for a missing folder, and ``ValueError`` naming the file when
    one of :data:`TOKENIZER_JSON_FILES` present is not a UTF-8 JSON object (:func:`mopo_core.lm.checkpoints.read_json_object`),
    or naming the folder when transformers cannot build a tokenizer from it (no tokenizer files,
    malformed contents)."""
    folder = existing_directory(path)
    for name in TOKENIZER_JSON_FILES:
        if (folder / name).is_file():
            read_json_object(folder / name)
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers and the tokenizers library raise many types (tokenizers: plain Exception)
        raise ValueError(f"{folder}: cannot load the tokenizer ({one_line(exc)})") from None


def asks_for_bos(tokenizer) -> bool:
    """Whether ``tokenizer`` opens a text with its bos token: its own encoding with special tokens
    does (a post-processor that adds it, as Llama's), or it is one of :func:`word_tokenizer`'s
    (whose convention, ``SPECIAL_TOKENS``, always opens with ``<bos>``). Qwen2.5 and GPT-2 style
    tokenizers name a bos token but never add it, so they get none."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    if tokenizer.bos_token == SPECIAL_TOKENS["bos_token"]:
        return True
    opening = tokenizer("", add_special_tokens=True)["input_ids"]
    return bool(opening) and opening[0] == bos


def sequence_ids(tokenizer, text: str, add_eos: bool = True) -> list[int]:
    """``[bos] + ids(text) (+ [eos])``; bos only where the tokenizer asks for one
    (:func:`asks_for_bos`) and the text does not already start with it (a chat-formatted prompt,
    see :func:`mopo_core.lm.registry.format_prompt`: the template wrote it, and a second one
    derails the model); eos skipped when the tokenizer has none. The one place where prompts
    become ids, for training and sampling."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    has_bos = asks_for_bos(tokenizer) and not text.startswith(tokenizer.bos_token)
    bos = [tokenizer.bos_token_id] if has_bos else []
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    return bos + ids + eos


# ------------------------------------------------------------------------------- models


def tiny_gpt(
    vocab_size: int,
    n_layer: int = 2,
    n_head: int = 2,
    n_embd: int = 64,
    n_positions: int = 64,
    seed: int = 0,
    *,
    dropout: float = 0.0,
    tokenizer=None,
) -> GPT2LMHeadModel:
    """A small GPT-2 with seeded random weights (fp32, CPU, train mode).

    ``tokenizer`` (optional) copies its bos/eos/pad ids into the config so that a saved
    model generates with them.
    """
    ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad")}
    config = GPT2Config(
        vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, **ids,
    )
    with seeded(seed):
        return GPT2LMHeadModel(config)


def load_model(
    path: str | os.PathLike,
    dtype="auto",
    device="auto",
    lora: LoraSettings | None = None,
    *,
    gradient_checkpointing: bool = False,
    quantize: int | None = None,
    check_memory: bool = True,
):
    """A causal LM from a local Hugging Face checkpoint directory.

    The directory holds ``config.json`` and safetensors (one file or shards with
    ``model.safetensors.index.json``) or, when it has no safetensors, weights-only pickles
    (``pytorch_model.bin`` or shards with its index), read only through
    ``torch.load(weights_only=True)``; see :mod:`mopo_core.lm.checkpoints`. Never downloads
    (``local_files_only``) or runs repository code (``trust_remote_code=False``). Weights
    go straight to ``device`` in ``dtype`` (``"auto"``: see :func:`mopo_core.lm.devices.resolve_dtype`) shard by
    shard: transformers 5 builds the model without memory first and always loads this
    way (what ``low_cpu_mem_usage=True`` did in transformers 4). On the CPU, safetensors
    already in ``dtype`` stay memory-mapped: loading adds almost no resident memory and
    pages are read on first use (a 1.3B bf16 model: +0.06 GiB RSS in 3 s).

    lora: wrap with adapters (:func:`mopo_core.lm.lora.apply_lora`). gradient_checkpointing: recompute each
    layer's activations in backward (:func:`enable_gradient_checkpointing`). quantize: 4
    or 8 bits with bitsandbytes, on a CUDA device only. check_memory: first refuse with
    :class:`mopo_core.lm.checkpoints.InsufficientMemoryError` when the parameters would not
    fit in the device's available memory (weights only; check a training step with
    ``estimate_training_memory(...).check_fits()``).

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` naming the
    directory or file for a file, a missing, unreadable, non-causal-LM or remote-code
    ``config.json``, missing weights, a missing shard, a file cut short, pickled weights
    that hold more than named tensors, a stored tensor whose shape differs from what
    ``config.json`` implies (:func:`mopo_core.lm.checkpoints.model_for_weights`) or a tensor
    the model needs and the checkpoint lacks. The model comes back in eval mode.
    """
    folder = existing_directory(path)
    config = checkpoints.read_config(folder)
    weights = checkpoints.find_weights(folder)
    checkpoints.model_for_weights(config, weights)
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    quantization = _quantization_config(quantize, target, torch_dtype)
    if check_memory:
        checkpoints.estimate_load_memory(config, torch_dtype, lora, quantize).check_fits(device=target)
    model, info = AutoModelForCausalLM.from_pretrained(
        folder, config=config, local_files_only=True, trust_remote_code=False,
        use_safetensors=weights.safetensors, weights_only=True, dtype=torch_dtype, device_map={"": target},
        quantization_config=quantization, output_loading_info=True,
    )
    checkpoints.check_loading_info(folder, info)
    return _finish(model.eval(), lora, gradient_checkpointing)


def build_model(config, dtype="auto", device="auto", lora: LoraSettings | None = None, seed: int = 0, *,
                gradient_checkpointing: bool = False):
    """A causal LM with seeded random weights from a transformers config or a config dict
    (see :func:`mopo_core.lm.checkpoints.as_config`), on ``device`` in ``dtype``, in train mode; ``lora`` and
    ``gradient_checkpointing`` as in :func:`load_model`."""
    config = as_config(config)
    target = resolve_device(device)
    with seeded(seed):  # LoRA's initial adapters too
        model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype, target))
        return _finish(model.to(target), lora, gradient_checkpointing)


def enable_gradient_checkpointing(model, lora: bool = False) -> None:
    """Recompute each decoder layer's activations during backward instead of keeping them
    (torch's non-reentrant checkpoint; it takes effect in train mode only).
    ``lora=True`` (call before wrapping with adapters) also makes the frozen embedding's
    output require grad, so gradients flow through checkpointed layers to the adapters
    (``enable_input_require_grads``; transformers 5.24 registers it as well, and the hook
    only sets ``requires_grad``, so a repeat is harmless)."""
    if not model.supports_gradient_checkpointing:
        raise ValueError(f"gradient_checkpointing: {type(model).__name__} does not support it")
    # activation_checkpointing_enable in transformers 5.24, gradient_checkpointing_enable before; kwargs dict first
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    if lora:
        model.enable_input_require_grads()


def _quantization_config(bits: int | None, device: torch.device, dtype: torch.dtype):
    """A bitsandbytes config for 4-bit (NF4, computing in ``dtype``) or 8-bit (LLM.int8)
    loading, ``None`` for ``bits=None``; ``ValueError`` saying why when bitsandbytes cannot
    be used (it needs a CUDA device and must be importable)."""
    if bits is None:
        return None
    if bits not in (4, 8):
        raise ValueError(f"quantize: expected 4, 8 or None, got {bits!r}")
    problems = [] if device.type == "cuda" else [f"it runs on CUDA devices only, the device is {device}"]
    try:
        importlib.import_module("bitsandbytes")
    except ImportError as exc:
        problems.append(f"bitsandbytes cannot be imported ({exc}; pip install bitsandbytes)")
    if problems:
        raise ValueError(f"quantize={bits}: bitsandbytes {bits}-bit loading is unavailable: {'; '.join(problems)}")
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def save_model(model, tokenizer, path: str | os.PathLike) -> Path:
    """Write ``model`` (safetensors) and ``tokenizer`` (if not None) to ``path`` atomically:
    everything goes to a temporary folder beside ``path`` that is then renamed, so a
    reader never sees a half-written checkpoint; the folder and its files get the modes the
    umask gives (:func:`mopo_core.lm.registry.apply_umask`), not the temporary folder's
    owner-only ones. An existing ``path`` is replaced. A
    peft-wrapped model writes its adapter only (peft's format, which :func:`load_model`
    does not read)."""
    target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        _swap_in(apply_umask(staging), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _swap_in(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``, replacing an existing ``target`` directory."""
    if not target.exists():
        os.rename(staging, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, retired / "checkpoint")
    os.rename(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def _finish(model, lora: LoraSettings | None, gradient_checkpointing: bool):
    if gradient_checkpointing:
        enable_gradient_checkpointing(model, lora=lora is not None)
    return apply_lora(model, lora) if lora is not None else model


# ---------------------------------------------------------------------------------- SFT


def train_sft(
    model,
    tokenizer,
    texts: list[str],
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    device=None,
) -> list[float]:
    """Causal-LM fine-tuning on whole texts (``[bos] text [eos]``, padding masked out of
    the loss) with AdamW and gradient clipping at 1. Batches are drawn uniformly with
    replacement; ``seed`` fixes them (and dropout). Returns the loss of every step;
    the model is left in eval mode."""
    if not texts:
        raise ValueError("texts: need at least one training text")
    target = _model_device(model) if device is None else resolve_device(device)
    model.to(target).train()
    sequences = _encode_all(model, tokenizer, texts)
    optimizer = torch.optim.AdamW((p for p in model.parameters() if p.requires_grad), lr=lr)
    pad, history = pad_token_id(tokenizer), []
    with seeded(seed):
        for _ in range(steps):
            picks = torch.randint(len(sequences), (batch_size,)).tolist()
            ids, mask = _pad_right([sequences[i] for i in picks], pad)
            ids, mask = ids.to(target), mask.to(target)
            loss = causal_lm_loss(model, ids, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            history.append(loss.item())
    model.eval()
    return history


def causal_lm_loss(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over real (unmasked) target tokens, in fp32."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    targets, weights = ids[:, 1:], mask[:, 1:].to(logits.dtype)
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (losses * weights).sum() / weights.sum()


def _encode_all(model, tokenizer, texts: list[str]) -> list[list[int]]:
    """Encode every text; refuse (never truncate) one longer than the model's context."""
    limit = getattr(model.config, "max_position_embeddings", None)
    sequences = [sequence_ids(tokenizer, text) for text in texts]
    for i, seq in enumerate(sequences):
        if limit is not None and len(seq) > limit:
            raise ValueError(f"texts[{i}]: {len(seq)} tokens exceed the model's context of {limit}")
    return sequences


def _pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    return ids, mask


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id (masked positions never reach the loss)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer: has neither a pad nor an eos token")
    return pad


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


# ------------------------------------------------------------------------------ sampling


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: list[str],
    n: int = 1,
    max_new_tokens: int = 16,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    return_finished: bool = False,
):
    """``n`` responses per prompt, prompt-major (``prompts[i]``'s are at ``i*n:(i+1)*n``).

    Pure ancestral sampling from the model (no top-k/top-p), temperature 0 is greedy.
    Each response holds only the generated tokens up to the first eos, decoded without
    special tokens. The same seed and ``batch_size`` give the same responses; torch's
    global RNG state is left as it was. ``return_finished``: return ``(responses,
    finished)``, ``finished[i]`` telling whether response i ended with eos (``False``: cut at
    ``max_new_tokens``, so it is a prefix, not a whole response).
    """
    check_int(n, "n", 1)
    check_int(max_new_tokens, "max_new_tokens", 1)
    temperature = check_nonnegative(temperature, "temperature")
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {}
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, pad_token_id=pad_token_id(tokenizer), eos_token_id=tokenizer.eos_token_id,
        **sampling,
    )
    queries = [sequence_ids(tokenizer, p, add_eos=False) for p in prompts for _ in range(n)]
    was_training = model.training
    model.eval()
    try:
        with seeded(seed):
            out = []
            for start in range(0, len(queries), batch_size):
                out += _generate(model, tokenizer, queries[start : start + batch_size], config)
    finally:
        model.train(was_training)
    texts = [text for text, _ in out]
    return (texts, [done for _, done in out]) if return_finished else texts


def _generate(model, tokenizer, queries: list[list[int]], config: GenerationConfig) -> list[tuple[str, bool]]:
    """Left-pad one batch of prompt ids, generate, and decode the new tokens to eos; (text,
    whether eos was generated) per query."""
    pad = config.pad_token_id
    width = max(len(q) for q in queries)
    ids = torch.tensor([[pad] * (width - len(q)) + q for q in queries])
    mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in queries])
    device = _model_device(model)
    tokens = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
    return [_decode_response(tokenizer, row[width:].tolist()) for row in tokens]


def _decode_response(tokenizer, ids: list[int]) -> tuple[str, bool]:
    eos = tokenizer.eos_token_id
    finished = eos is not None and eos in ids
    if finished:
        ids = ids[: ids.index(eos)]
    return tokenizer.decode(ids, skip_special_tokens=True), finished
