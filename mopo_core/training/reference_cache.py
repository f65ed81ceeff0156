"""The text task's reference model (a tiny GPT-2 fitted by SFT on the task's corpus), fitted
once per settings and cached on disk, so that a second job, sweep point or app start on the
same settings reads it in well under a second instead of refitting it.

Contract of :func:`fitted_reference`:

- the result is bit-identical to a fresh fit (``tiny_gpt`` + ``train_sft``, both seeded, with
  the global RNG state restored): a cache hit returns the same weights, in eval mode, and
  leaves the global RNGs as a fit would;
- the key is the SHA-256 of :func:`reference_settings`, plain JSON of everything the fit
  depends on: the cache format (:data:`CACHE_VERSION`), the seed, the SFT steps, the model
  shape and SFT settings (the defaults of :func:`~mopo_core.lm.models.tiny_gpt` and
  :func:`~mopo_core.lm.models.train_sft`, read from their signatures), and digests of the
  vocabulary and of the corpus itself (so any task setting that changes the corpus changes the
  key, and none that does not, e.g. ``pairs_per_prompt``, does). No torch or transformers
  object or version is part of it: a reference fitted under another torch version is reused
  (runs keep their reference across upgrades); delete the cache folder to refit;
- an entry is one ``.safetensors`` file (no pickle) whose metadata hold the settings JSON and
  a SHA-256 of every tensor's bytes; it is written to a temporary file in the cache folder and
  renamed into place (``os.replace``), so two processes fitting at once never leave a partial
  file, and a failed write leaves nothing behind (the fit is returned, with a warning);
- an entry that cannot be read, whose settings differ from the ones asked or whose tensors do
  not match their digest is not trusted: a warning names it and why, and the reference is
  refitted and written over it;
- ``progress(fraction, text)`` (fraction in [0, 1], never decreasing, the last 1.0) tells the
  caller what is happening; the engine draws nothing (the app shows a bar, the worker and the
  command line print lines: :func:`print_progress`).

Folder (:func:`cache_dir`): the ``folder`` argument, else ``$MOPO_REFERENCE_CACHE``
(:data:`mopo_core.lm.registry.CACHE_ENV`), else the models folder's ``cache``
(:data:`mopo_core.lm.registry.CACHE_DIR`). Tests set the variable (tests/conftest.py) so that
they never write to the user's folder."""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mopo_core.lm.models import tiny_gpt, train_sft
from mopo_core.lm.registry import CACHE_DIR, CACHE_ENV, apply_umask, models_dir

#: Version of the entry format and of the settings' layout; a change misses every old entry.
CACHE_VERSION = 1
#: ``progress(fraction, text)``: fraction in [0, 1], a sentence saying what is being done.
Progress = Callable[[float, str], None]
#: How many progress calls a fit makes at most (besides the first and the last).
PROGRESS_UPDATES = 50

log = logging.getLogger(__name__)


def cache_dir(folder: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``folder`` if given, else ``$MOPO_REFERENCE_CACHE``, else
    ``<models folder>/cache``; absolute, not created here."""
    if folder is None:
        setting = os.environ.get(CACHE_ENV)
        folder = setting if setting else models_dir() / CACHE_DIR
    return Path(folder).expanduser().resolve()


def reference_settings(vocabulary: dict[str, int], corpus: list[str], seed: int, sft_steps: int) -> dict:
    """Everything the reference's weights depend on, as plain JSON values (module doc).
    ``vocabulary``: the tokenizer's token -> id map; ``corpus``: the SFT texts, in order."""
    return {"format": CACHE_VERSION, "kind": "text-task reference", "seed": seed, "sft_steps": sft_steps,
            "vocab_size": len(vocabulary), "model": _defaults(tiny_gpt), "sft": _defaults(train_sft),
            "vocabulary_sha256": _sha256(json.dumps(sorted(vocabulary.items(), key=lambda item: item[1]))),
            "corpus_texts": len(corpus), "corpus_sha256": _sha256(json.dumps(corpus))}


def cache_path(settings: dict, folder: str | os.PathLike | None = None) -> Path:
    """The entry file for ``settings`` in the cache folder (:func:`cache_dir` of ``folder``)."""
    key = _sha256(json.dumps(settings, sort_keys=True))
    return cache_dir(folder) / f"text-reference-{key[:32]}.safetensors"


def fitted_reference(tokenizer, corpus: list[str], seed: int, sft_steps: int, progress: Progress | None = None,
                     folder: str | os.PathLike | None = None) -> torch.nn.Module:
    """The reference ``tiny_gpt(len(tokenizer), seed=seed)`` fitted by ``train_sft`` on ``corpus``
    for ``sft_steps`` steps (seeded by ``seed``), in eval mode: read from the cache when an entry
    for these settings is there and sound, else fitted and written (module doc).
    ``progress``: default :func:`print_progress`."""
    progress = progress or print_progress
    settings = reference_settings(tokenizer.get_vocab(), corpus, seed, sft_steps)
    path = cache_path(settings, folder)
    if path.exists():
        progress(0.0, f"Reading the fitted reference from {path}…")
        try:
            model = tiny_gpt(len(tokenizer), seed=seed)
            model.load_state_dict(_read_entry(path, settings))
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            log.warning("reference cache: %s is unreadable or does not match its settings (%s); refitting it",
                        path, exc)
        else:
            progress(1.0, "Read the fitted reference from the cache.")
            return model.eval()
    model = tiny_gpt(len(tokenizer), seed=seed)  # afresh: a failed read may have half-filled the last one
    _fit(model, tokenizer, corpus, seed, sft_steps, progress)
    where = f"cached it in {path}" if _write_entry(path, model, settings) else "could not cache it"
    progress(1.0, f"Fitted the reference ({sft_steps} SFT steps) and {where}.")
    return model


def print_progress(fraction: float, text: str) -> None:
    """The default progress: one line on stderr per tenth of the way (and the first and last),
    for the worker's log and the command line."""
    if fraction in (0.0, 1.0) or int(10 * fraction) != int(10 * (fraction - 1 / PROGRESS_UPDATES)):
        print(f"reference: {100 * fraction:3.0f}% {text}", file=sys.stderr, flush=True)


def _fit(model: torch.nn.Module, tokenizer, corpus: list[str], seed: int, steps: int, progress: Progress) -> None:
    """``train_sft`` with progress: each SFT step runs the model forward once, which a forward
    hook counts (removed afterwards; it changes no number)."""
    every = max(1, steps // PROGRESS_UPDATES)
    done = [0]

    def count(module, args, kwargs):
        done[0] += 1
        if done[0] % every == 0 and done[0] < steps:
            progress(done[0] / steps, f"Fitting the reference: SFT step {done[0]} of {steps} (once per settings; "
                                      "later starts read it from the cache)…")

    progress(0.0, f"Fitting the reference: {steps} SFT steps of a tiny GPT-2 on {len(corpus)} texts…")
    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        train_sft(model, tokenizer, corpus, steps=steps, seed=seed)
    finally:
        hook.remove()


def _read_entry(path: Path, settings: dict) -> dict[str, torch.Tensor]:
    """The state dict in entry ``path``, checked against ``settings`` and its tensors' digest
    (``ValueError`` saying what does not match; safetensors' own error for a damaged file)."""
    with safe_open(path, framework="pt") as entry:
        metadata = entry.metadata() or {}
    if "settings" not in metadata or "sha256" not in metadata:
        raise ValueError("no settings or digest in its metadata")
    if json.loads(metadata["settings"]) != settings:
        raise ValueError("its settings differ from the ones asked")
    tensors = load_file(path)
    if _digest(tensors) != metadata["sha256"]:
        raise ValueError("its tensors do not match their digest")
    return tensors


def _write_entry(path: Path, model: torch.nn.Module, settings: dict) -> bool:
    """Write ``model``'s state dict to ``path`` atomically (temporary file, then ``os.replace``);
    whether it was written. A failed write warns and leaves nothing behind (the cache is an
    optimisation)."""
    tensors = {name: value.detach().to("cpu", copy=True).contiguous() for name, value in model.state_dict().items()}
    metadata = {"settings": json.dumps(settings), "sha256": _digest(tensors), "torch": torch.__version__}
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".writing-", suffix=".safetensors")
        os.close(handle)
        save_file(tensors, temporary, metadata=metadata)
        os.replace(apply_umask(Path(temporary)), path)
        temporary = None
        return True
    except (OSError, SafetensorError) as exc:
        log.warning("reference cache: could not write %s (%s); the fitted reference is used uncached", path, exc)
        return False
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, by name."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def _defaults(function) -> dict:
    """The numeric keyword defaults of ``function`` (the fit's settings it is called without;
    ``seed`` and ``steps`` are passed, so they are keyed by themselves)."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if type(p.default) in (int, float) and name not in ("seed", "steps")}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
