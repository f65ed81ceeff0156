"""Local causal-LM checkpoint directories: validation, inspection and memory estimates.

A checkpoint directory holds ``config.json`` and its weights in one of four layouts,
taken in this order of preference when several are present: ``model.safetensors``,
``model.safetensors.index.json`` (sharded safetensors), ``pytorch_model.bin``,
``pytorch_model.bin.index.json`` (sharded pickles; only ever read by
``torch.load(weights_only=True)``). Nothing here downloads or runs repository code.

Every check reads headers and metadata only: ``config.json`` must be a UTF-8 JSON object
that transformers accepts, safetensors headers must be consistent (each tensor's bytes are
its shape times its dtype's size and lie in the file), pickles must hold only named tensors,
and every stored tensor whose name the model has must have the shape ``config.json`` implies
(:func:`model_for_weights`). A checkpoint that fails is refused with a ``ValueError`` naming
the file (and field or tensor) before any weight is loaded.

Units: every size is in bytes; messages print GiB (2**30 bytes). Parameter counts are
those of ``model.parameters()`` (tied weights counted once), computed on the meta device
without reading any weights.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from mopo_core.lm.devices import resolve_device, resolve_dtype
from mopo_core.lm.lora import LoraSettings, apply_lora
from mopo_core.validation import check_int

#: Weight layouts in order of preference (safetensors first).
WEIGHT_NAMES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)
GIB = 2**30
#: safetensors' own limit on the JSON header's size.
MAX_SAFETENSORS_HEADER = 100 * 2**20
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U64": torch.uint64, "U32": torch.uint32,
    "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


# ------------------------------------------------------------------------- validation


def existing_directory(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path``; ``FileNotFoundError`` when it does not exist, ``ValueError`` when
    it is a file (a checkpoint is a directory)."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such checkpoint directory")
    if not folder.is_dir():
        raise ValueError(f"{folder}: expected a checkpoint directory, got a file")
    return folder


def read_json_object(file: Path) -> dict:
    """The JSON object in ``file``; ``ValueError`` naming the file when it is not UTF-8 text, not
    valid JSON (or nested too deeply to parse) or not an object."""
    try:
        raw = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file}: not UTF-8 text ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{file}: JSON nested too deeply to read") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(raw).__name__}")
    return raw


def one_line(exc: BaseException) -> str:
    """``"<type>: <message>"`` of an exception from a library, its whitespace runs (newlines
    included) collapsed to single spaces, for an error message of one line."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def as_config(config) -> PretrainedConfig:
    """A transformers config, or one made from a dict that names its ``model_type``
    (e.g. ``{"model_type": "gpt2", "n_layer": 2}``)."""
    if isinstance(config, dict):
        if "model_type" not in config:
            raise ValueError(f"config: a config dict must name its 'model_type', got keys {sorted(config)}")
        settings = dict(config)
        config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    if not isinstance(config, PretrainedConfig):
        raise TypeError(f"config: expected a dict or a transformers config, got {type(config).__name__}")
    return config


def read_config(path: str | os.PathLike) -> PretrainedConfig:
    """The config of a local causal-LM checkpoint directory, checked before any weight is read.

    Raises ``ValueError`` naming the file or directory when ``config.json`` is missing or
    not a UTF-8 JSON object, names repository code (``auto_map``: refused, remote code is
    never run), has no ``model_type`` (a string) or one without a causal-LM class in
    transformers, lists ``architectures`` (a list of class names) none of which is a causal
    LM (``*ForCausalLM``, ``*LMHeadModel``), or holds values transformers refuses.
    """
    folder = existing_directory(path)
    file = folder / "config.json"
    if not file.is_file():
        raise ValueError(f"{folder}: no config.json (found: {_listing(folder)})")
    raw = read_json_object(file)
    if "auto_map" in raw:
        code = sorted(map(str, raw["auto_map"])) if isinstance(raw["auto_map"], dict) else [_short(raw["auto_map"])]
        raise ValueError(
            f"{file}: 'auto_map' asks for the repository's own model code ({', '.join(code)}); "
            "remote code is never run (trust_remote_code=False): use an architecture that transformers ships"
        )
    model_type, architectures = raw.get("model_type"), raw.get("architectures") or []
    if model_type is not None and not isinstance(model_type, str):
        raise ValueError(f"{file}: field 'model_type': expected a string, got {_short(model_type)}")
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise ValueError(f"{file}: field 'architectures': expected a list of class names, got {_short(architectures)}")
    _check_causal_lm(folder, model_type, architectures)
    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers' field validation raises TypeError, ValueError, its own errors ...
        raise ValueError(f"{file}: not a valid {model_type} config ({one_line(exc)})") from None


def _check_causal_lm(folder: Path, model_type, architectures: list) -> None:
    if model_type is None:
        raise ValueError(f"{folder}: config.json names no 'model_type' (architectures: {architectures or 'none'})")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(
            f"{folder}: model_type {model_type!r} (architectures: {', '.join(map(str, architectures)) or 'none'}) "
            "is not a causal LM that transformers can load (AutoModelForCausalLM has no class for it)"
        )
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if architectures and not any(a in causal or str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        raise ValueError(
            f"{folder}: architecture {', '.join(map(str, architectures))} is not a causal LM "
            f"(the causal LM of model_type {model_type!r} is {MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]})"
        )


@dataclass(frozen=True)
class WeightFiles:
    """A checkpoint's weights: the layout chosen (a :data:`WEIGHT_NAMES` entry), every weight
    file in order (one, or the shards an index lists), and whether they are safetensors."""

    layout: str
    files: tuple[Path, ...]
    safetensors: bool

    @property
    def size(self) -> int:
        """Bytes on disk of the weight files (index excluded)."""
        return sum(f.stat().st_size for f in self.files)


def find_weights(path: str | os.PathLike) -> WeightFiles:
    """The weight files of a checkpoint directory, checked to be present and complete.

    Safetensors files are checked against their header (every tensor's bytes must lie in
    the file); pickles must be whole zip archives (``torch.save``'s format); an index's
    shards must all exist, and for safetensors hold every tensor the index assigns them.
    Raises ``ValueError`` naming the directory and what is missing or cut short.
    """
    folder = existing_directory(path)
    layout = next((name for name in WEIGHT_NAMES if (folder / name).is_file()), None)
    if layout is None:
        raise ValueError(f"{folder}: no weights: expected one of {', '.join(WEIGHT_NAMES)} (found: {_listing(folder)})")
    safetensors = ".safetensors" in layout
    if layout.endswith(".index.json"):
        weight_map = _read_index(folder / layout)
        files = tuple(folder / shard for shard in dict.fromkeys(weight_map.values()))
        _check_shards_present(folder / layout, files, weight_map)
    else:
        weight_map, files = None, (folder / layout,)
    for file in files:
        if safetensors:
            header = safetensors_header(file)
            if weight_map is not None:
                _check_shard_tensors(file, header, weight_map)
        elif not zipfile.is_zipfile(file):
            raise ValueError(f"{file}: not a whole zip archive (torch.save's format): the file is cut short, "
                             "or an old-format pickle that is not read")
    return WeightFiles(layout, files, safetensors)


def _read_index(index: Path) -> dict[str, str]:
    """An index's ``weight_map`` (tensor name -> shard file name)."""
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index}: 'weight_map' must map tensor names to shard files, got {_short(weight_map)}")
    outside = [str(s) for s in weight_map.values() if not isinstance(s, str) or Path(s).name != s]
    if outside:
        raise ValueError(f"{index}: shards must be file names in the checkpoint directory, got "
                         f"{_names(list(dict.fromkeys(outside)))}")
    return weight_map


def _check_shards_present(index: Path, files: tuple[Path, ...], weight_map: dict[str, str]) -> None:
    missing = [f for f in files if not f.is_file()]
    if missing:
        lost = sum(1 for shard in weight_map.values() if index.parent / shard in missing)
        raise ValueError(f"{index.parent}: {index.name} lists missing shard(s) "
                         f"{', '.join(f.name for f in missing)} ({lost} of {len(weight_map)} tensors)")


def _check_shard_tensors(file: Path, header: dict, weight_map: dict[str, str]) -> None:
    absent = [name for name, shard in weight_map.items() if shard == file.name and name not in header]
    if absent:
        raise ValueError(f"{file}: lacks {len(absent)} tensor(s) the index assigns it: {_names(absent)}")


def safetensors_header(file: Path) -> dict[str, dict]:
    """A safetensors file's tensor table (name -> dtype, shape, data_offsets), checked whole.

    Layout: an 8-byte little-endian header length n (at most
    :data:`MAX_SAFETENSORS_HEADER`), n bytes of JSON, then the data; ``data_offsets`` count
    from the start of the data. Each entry needs a dtype (a string), a shape (integers >= 0)
    and offsets ``[begin, end]`` with ``0 <= begin <= end``; for a dtype of known size the
    ``end - begin`` bytes must be the shape's elements times that size. Raises ``ValueError``
    naming the file (and the tensor, or those whose bytes lie past its end) otherwise.
    """
    size = file.stat().st_size
    with open(file, "rb") as handle:
        n = int.from_bytes(handle.read(8), "little")
        if size < 8 or 8 + n > size:
            raise ValueError(f"{file}: cut short or not safetensors: {size} bytes, the header alone needs {8 + n}")
        if n > MAX_SAFETENSORS_HEADER:
            raise ValueError(f"{file}: not safetensors: a header of {n} bytes, over the format's limit of "
                             f"{MAX_SAFETENSORS_HEADER}")
        try:
            header = json.loads(handle.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ValueError(f"{file}: unreadable safetensors header ({one_line(exc)})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{file}: unreadable safetensors header (a JSON {type(header).__name__}, not an object)")
    header.pop("__metadata__", None)
    ends = {name: _checked_entry(file, name, entry) for name, entry in header.items()}
    data = size - 8 - n
    beyond = [name for name, end in ends.items() if end > data]
    if beyond:
        needed = 8 + n + max(ends.values())
        raise ValueError(f"{file}: cut short: {size} bytes of {needed}; tensors missing their data: {_names(beyond)}")
    return header


def _checked_entry(file: Path, name: str, entry) -> int:
    """One safetensors header entry checked (see :func:`safetensors_header`); its end offset."""
    where = f"{file}: tensor {_short(name)}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object with dtype, shape and data_offsets, got {_short(entry)}")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise ValueError(f"{where}: field 'dtype': expected a string, got {_short(dtype)}")
    if not isinstance(shape, list) or not all(_natural(d) for d in shape):
        raise ValueError(f"{where}: field 'shape': expected a list of integers >= 0, got {_short(shape)}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_natural, offsets))
            and offsets[0] <= offsets[1]):
        raise ValueError(f"{where}: field 'data_offsets': expected [begin, end] with 0 <= begin <= end, got "
                         f"{_short(offsets)}")
    known = _SAFETENSORS_DTYPES.get(dtype)
    if known is not None and offsets[1] - offsets[0] != math.prod(shape) * known.itemsize:
        raise ValueError(f"{where}: shape {shape} in {dtype} needs {math.prod(shape) * known.itemsize} bytes, "
                         f"its data_offsets hold {offsets[1] - offsets[0]}")
    return offsets[1]


def _natural(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def pickle_refusal(file: Path, exc: pickle.UnpicklingError) -> ValueError:
    """The error for pickled weights that ``torch.load(weights_only=True)`` refused (they
    hold more than tensors: e.g. a class or function that unpickling would call): names the
    file and torch's reason, on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    boilerplate = ("Weights only load failed", "Check the documentation", "(1)", "(2)")
    cause = next((line.split("error:", 1)[1].split(". ", 1)[0].strip() for line in lines
                  if "WeightsUnpickler error:" in line), None)
    if cause is None:
        cause = next((line for line in lines if not line.startswith(boilerplate)), type(exc).__name__)
    return ValueError(f"{file.parent}: {file.name}: the pickled weights hold more than tensors and are refused "
                      f"(read only with torch.load(weights_only=True): {cause})")


def check_loading_info(folder: Path, info: dict) -> None:
    """Refuse a load in which transformers had to initialise weights the checkpoint lacks
    (``info`` from ``from_pretrained(..., output_loading_info=True)``)."""
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise ValueError(f"{folder}: the checkpoint lacks {len(missing)} tensor(s) the model needs: {_names(missing)}")


def _short(value, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters, for a message about a bad value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _names(names: list[str], shown: int = 8) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _listing(folder: Path) -> str:
    return ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"


# ---------------------------------------------------------------------------- inspection


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint directory holds, read without loading its weights.

    ``parameters``: count of the model's parameters (tied weights once); ``stored_dtype``:
    the dtype holding most stored elements (e.g. ``"bfloat16"``); ``size_on_disk``: bytes of
    the weight files; ``max_positions``: ``None`` when the config sets no limit.
    """

    path: Path
    architecture: str
    model_type: str
    parameters: int
    stored_dtype: str
    weight_layout: str
    weight_files: int
    size_on_disk: int
    vocab_size: int
    hidden_size: int
    num_layers: int
    max_positions: int | None


def inspect_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """Describe a local causal-LM checkpoint directory (see :class:`CheckpointInfo`).

    Validates it as :func:`read_config`, :func:`find_weights` and :func:`model_for_weights`
    do (everything :func:`mopo_core.lm.models.load_model` checks before reading weights); the
    parameter count comes from the model built on the meta device (no weight is read or
    allocated).
    """
    config = read_config(path)
    weights = find_weights(path)
    base = model_for_weights(config, weights)
    return CheckpointInfo(
        path=Path(path),
        architecture=(config.architectures or [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]])[0],
        model_type=config.model_type,
        parameters=sum(p.numel() for p in base.parameters()),
        stored_dtype=_stored_dtype(weights),
        weight_layout=weights.layout,
        weight_files=len(weights.files),
        size_on_disk=weights.size,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        max_positions=getattr(config, "max_position_embeddings", None),
    )


class StoredTensor(NamedTuple):
    """One tensor of a checkpoint's weight files: its dtype (torch's name, e.g.
    ``"bfloat16"``, or the safetensors code in lower case when torch has none), its shape and
    the file holding it."""

    dtype: str
    shape: tuple[int, ...]
    file: Path


def stored_tensors(weights: WeightFiles) -> dict[str, StoredTensor]:
    """Every tensor the weight files hold, by name, read from the safetensors headers or the
    pickles' metadata (``torch.load`` onto the meta device, weights_only: no tensor data is
    read). Raises ``ValueError`` naming the file for pickles that hold more than tensors
    (:func:`pickle_refusal`), that torch cannot read, or that are not a dict of named tensors."""
    tensors: dict[str, StoredTensor] = {}
    for file in weights.files:
        if weights.safetensors:
            for name, entry in safetensors_header(file).items():
                known = _SAFETENSORS_DTYPES.get(entry["dtype"])
                dtype = str(known).removeprefix("torch.") if known is not None else entry["dtype"].lower()
                tensors[name] = StoredTensor(dtype, tuple(entry["shape"]), file)
            continue
        try:
            state = torch.load(file, map_location="meta", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise pickle_refusal(file, exc) from None
        except Exception as exc:  # a damaged archive: torch raises RuntimeError, EOFError, KeyError ...
            raise ValueError(f"{file}: unreadable torch.save archive ({one_line(exc)})") from None
        if not isinstance(state, dict):
            raise ValueError(f"{file}: holds a {type(state).__name__}, not a dict of named tensors")
        foreign = [_short(key, 40) for key, value in state.items()
                   if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
        if foreign:
            raise ValueError(f"{file}: holds more than named tensors: {_names(foreign)} (a non-string name or a "
                             "value that is not a tensor)")
        for name, tensor in state.items():
            tensors[name] = StoredTensor(str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), file)
    return tensors


def model_for_weights(config: PretrainedConfig, weights: WeightFiles) -> torch.nn.Module:
    """The model ``config`` describes, built on the meta device (shapes only, no memory),
    after checking the weights against it: every stored tensor whose name the model has
    (as stored, or below the model's ``base_model_prefix``, the layout of base-model
    checkpoints) must have the model's shape for it. Tensors the model does not name are
    left to transformers' loader (renamed legacy keys); tensors it needs and the
    checkpoint lacks are named at load (:func:`check_loading_info`). Raises ``ValueError``
    naming ``config.json`` when transformers cannot build the model, or naming the weight
    file, the tensor, its shape and the expected one."""
    folder = weights.files[0].parent
    try:
        model, _ = _meta_model(config, torch.float32, None)
    except Exception as exc:  # transformers raises ValueError, RuntimeError, TypeError ... for impossible sizes
        raise ValueError(f"{folder / 'config.json'}: describes no model transformers can build "
                         f"({one_line(exc)})") from None
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    prefix = model.base_model_prefix
    wrong = []
    for name, stored in stored_tensors(weights).items():
        shape = expected.get(name, expected.get(f"{prefix}.{name}"))
        if shape is not None and shape != stored.shape:
            wrong.append((stored.file, name, stored.shape, shape))
    if wrong:
        file, name, found, shape = wrong[0]
        more = f" (and {len(wrong) - 1} more tensor(s) of the wrong shape)" if len(wrong) > 1 else ""
        raise ValueError(f"{file}: tensor {name} has shape {list(found)}, but the model that config.json describes "
                         f"has {list(shape)}{more}")
    return model


def _stored_dtype(weights: WeightFiles) -> str:
    """The dtype holding most stored elements (:func:`stored_tensors`)."""
    counts: dict[str, int] = {}
    for stored in stored_tensors(weights).values():
        counts[stored.dtype] = counts.get(stored.dtype, 0) + math.prod(stored.shape)
    if not counts:
        raise ValueError(f"{weights.files[0].parent}: the weight files hold no tensors")
    return max(counts, key=counts.get)


# ------------------------------------------------------------------------------- memory


class InsufficientMemoryError(MemoryError):
    """Refusal before loading or training: the estimate exceeds the available memory."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs, by part, and ``total``: the peak of one training step.

    parameters: every parameter in its dtype (LoRA adapters included); gradients: one per
    trainable parameter, in its dtype; optimizer: optimizer state; activations: tensors
    the forward pass keeps for backward; logits: the log-softmax buffers of the positions
    scored at once; reference: frozen copies of the parameters (DPO/IPO reference model);
    head_gradient: the gradient of a trainable output head (or tied embedding) alive while
    the later log-prob chunks run backward; update: the temporaries at the end of backward and
    in the optimizer step; leash_kl: the float32 tensors offline MOPO's KL leash keeps for
    backward over the whole vocabulary at its sampled rows' positions
    (:func:`estimate_training_memory`).
    ``advice``: what would lower the estimate, for the refusal message.

    ``total = parameters + optimizer + reference + max(backward, update phase)``, backward =
    ``activations + logits + head_gradient + leash_kl`` (backward starts with every activation
    alive and few gradients made), update phase = ``gradients + update`` (the activations are
    gone, every gradient is alive). A load estimate has parameters only.
    """

    parameters: int
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    logits: int = 0
    reference: int = 0
    advice: tuple[str, ...] = ()
    head_gradient: int = 0
    update: int = 0
    leash_kl: int = 0

    @property
    def backward(self) -> int:
        """Bytes beside the parameters, optimizer state and references when backward starts."""
        return self.activations + self.logits + self.head_gradient + self.leash_kl

    @property
    def update_phase(self) -> int:
        """Bytes beside the parameters, optimizer state and references in the optimizer step."""
        return self.gradients + self.update

    @property
    def total(self) -> int:
        return self.parameters + self.optimizer + self.reference + max(self.backward, self.update_phase)

    def describe(self) -> str:
        """``"parameters 2.45 GiB + optimizer 0.06 GiB + max(backward: activations 1.20 GiB +
        logits 0.50 GiB, update: gradients 0.03 GiB)"``, non-zero parts only."""
        def parts(names):
            return " + ".join(f"{name.replace('_', ' ')} {getattr(self, name) / GIB:.2f} GiB"
                              for name in names if getattr(self, name))
        text = parts(("parameters", "optimizer", "reference"))
        phases = [f"{label}: {parts(names)}" for label, names in (
            ("backward", ("activations", "logits", "head_gradient", "leash_kl")), ("update", ("gradients", "update")))
            if parts(names)]
        return f"{text} + max({', '.join(phases)})" if phases else text

    def fits(self, available: int) -> bool:
        """Whether ``total`` bytes fit in ``available`` bytes."""
        return self.total <= available

    def check_fits(self, available: int | None = None, device: str | torch.device = "auto") -> None:
        """Raise :class:`InsufficientMemoryError` unless the estimate fits; ``available``
        defaults to :func:`available_memory` of ``device``."""
        target = resolve_device(device)
        free = available_memory(target) if available is None else available
        if not self.fits(free):
            hint = f": {', '.join(self.advice)}" if self.advice else ""
            raise InsufficientMemoryError(
                f"needs {self.total / GIB:.2f} GiB ({self.describe()}), {free / GIB:.2f} GiB available on "
                f"{target}{hint}"
            )


def estimate_load_memory(config_or_dir, dtype="auto", lora: LoraSettings | None = None,
                         quantize: int | None = None) -> MemoryEstimate:
    """Bytes to hold a model's parameters in ``dtype`` (see :func:`estimate_training_memory`
    for the arguments). ``quantize`` (4 or 8, bitsandbytes): the decoder's linear weights
    take 4 bits plus one fp32 scale per 64 (NF4) or 8 bits per element (LLM.int8; its
    per-row scales are left out); everything else keeps ``dtype``."""
    config = _config(config_or_dir)
    base, model = _meta_model(config, _dtype(dtype), lora)
    parameters = _bytes(model.parameters())
    if quantize is not None:
        output = base.get_output_embeddings()
        linear = [m.weight for m in base.modules() if isinstance(m, torch.nn.Linear) and m is not output]
        per_element = {4: 0.5 + 4 / 64, 8: 1.0}[quantize]
        parameters += int(sum(w.numel() * per_element for w in linear)) - _bytes(linear)
    advice = ("use bf16 (dtype='bf16')",) if _dtype(dtype) == torch.float32 else ()
    if quantize is None:
        advice += ("quantize to 4 or 8 bits on a CUDA device",)
    return MemoryEstimate(parameters, advice=advice)


def estimate_training_memory(
    config_or_dir,
    batch_size: int,
    seq_len: int,
    dtype="bf16",
    lora: LoraSettings | None = None,
    optimizer: str = "adamw",
    gradient_checkpointing: bool = False,
    reference_copies: int = 0,
    logits_chunk: int | None = None,
    response_len: int | None = None,
    leash_rows: int = 0,
    leash_response_len: int | None = None,
) -> MemoryEstimate:
    """Bytes one training step needs at its peak (see :class:`MemoryEstimate` for how the
    parts add up): parameters, gradients, optimizer state, activations, logits,
    ``reference_copies`` frozen copies of the parameters (a DPO/IPO reference, the start
    MOPO's leash measures from, the reference the evaluation samples), and the temporaries
    of the backward's start and of the optimizer step.

    config_or_dir: a transformers config, a config dict (with ``model_type``) or a
    checkpoint directory. batch_size: sequences whose graphs are alive at once (MOPO: the
    step's response rows; DPO/IPO: twice the pairs); seq_len: their padded length in
    tokens. dtype: the weights' and activations' dtype (``"bf16"``, ``"fp32"``, ...; ``"auto"``
    as :func:`mopo_core.lm.devices.resolve_dtype` has it for this machine's default device).
    lora: adapters as :func:`mopo_core.lm.lora.apply_lora` makes them (peft keeps them in
    fp32); only they then train. logits_chunk: how many positions' logits exist at once
    when the log-probs are computed chunk by chunk (the fused path of
    ``sequence_logprobs``: its ``chunk_size``, by default ``FUSED_CHUNK_ELEMENTS // vocab``);
    ``None``: all of them (a forward that returns every logit). response_len: the positions
    per sequence whose log-probs are scored (the response tokens; at most and by default
    ``seq_len``). leash_rows: sequences of offline MOPO's KL leash scored in the same step
    (one sampled response per prompt, while the leash's multiplier is positive; padded to
    ``seq_len``), each with ``leash_response_len`` scored positions (default ``response_len``).

    Exact parts (counted on the meta-device model): parameters; gradients (each trainable
    parameter's size); optimizer ``"adamw"``: ``torch.optim.AdamW``'s (no amsgrad) exp_avg
    and exp_avg_sq, each in its parameter's dtype (fp32 for LoRA adapters, bf16 for a bf16
    full fine-tune), plus a 4-byte step per parameter tensor, ``"sgd"``: nothing (no
    momentum); reference: the parameters once more per copy.

    update (the temporaries around the optimizer step): two tensors of the largest trainable
    tensor's size. Measured (bench/memory_calibration.py, full bf16 fine-tuning of OPT-125m and
    of a two-layer Qwen2-0.5B, both with the input embedding tied to the head, under the
    trainer's fused AdamW): the step's peak above weights and state is the gradients plus two
    embedding-sized tensors (0.39 GiB against 0.37, 0.83 against 0.82), most likely the tied
    weight's second gradient and the sum it is accumulated into at the end of backward (the
    fused kernel updates in place; torch's per-tensor loop, used off CPU and CUDA, makes two
    tensors of a parameter's size for its denominator). An untied model under fused AdamW
    may peak lower (not measured).

    Logits: P * vocab * 16 bytes for the P positions scored at once (``batch_size *
    response_len``, at most ``logits_chunk``): backward starts with the last chunk's float32
    log-softmax input (kept by logsumexp) and logsumexp's backward
    ``grad * exp(x - logsumexp)``, three float32 (P, vocab) temporaries, alive together
    (the forward holds less: the head's output in ``dtype`` and two float32 buffers).
    head_gradient: with a trainable head (full fine-tuning; tied to the input embedding or
    not) and more than one chunk, the head's (vocab, hidden) gradient made by the first
    chunk is alive while the next chunks run.

    leash_kl: the leash's exact per-token KL to the start
    (:func:`mopo_core.lm.losses.per_token_kl`) keeps, for every chunk until backward, three
    float32 tensors over the vocabulary per scored position: the policy's log-softmax, its exp
    and the log-ratio (``leash_rows * leash_response_len * vocab * 12`` bytes); the leash rows'
    activations count with the other rows'. Not counted: the sampling of those responses
    (no gradient; done and freed before the step's forward).

    Activations (bytes per token): see :func:`_activation_bytes_per_token`; each term is a
    tensor autograd saves, counted once per storage. Not counted: the (heads, T, T)
    attention probabilities that eager attention or attention dropout keeps (GPT-2's default
    ``attn_pdrop``; PyTorch's SDPA kernels without dropout keep a log-sum-exp per head, which
    is counted), dropout inside a LoRA adapter (off by default), and resident memory that is
    no tensor (the autograd graph, BLAS buffers: about 12 MiB on a CPU,
    ``bench/memory_calibration.py``). Measured there (CPU, bf16, LoRA and full): within 2% of
    the peak on OPT-125m (50k vocabulary) and Qwen2-0.5B (152k) shapes; with two leash rows
    (LoRA), 1% and 3% above it.
    """
    check_int(batch_size, "batch_size", 1)
    check_int(seq_len, "seq_len", 1)
    if logits_chunk is not None:
        check_int(logits_chunk, "logits_chunk", 1)
    per_row = min(seq_len, seq_len if response_len is None else check_int(response_len, "response_len", 1))
    scored = batch_size * per_row
    leash_positions = check_int(leash_rows, "leash_rows", 0) * min(
        seq_len, per_row if leash_response_len is None else check_int(leash_response_len, "leash_response_len", 1))
    if optimizer not in ("adamw", "sgd"):
        raise ValueError(f"optimizer: expected 'adamw' or 'sgd', got {optimizer!r}")
    config, compute = _config(config_or_dir), _dtype(dtype)
    base, model = _meta_model(config, compute, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    tokens, b = (batch_size + leash_rows) * seq_len, compute.itemsize
    positions = scored if logits_chunk is None else min(scored, logits_chunk)
    head = base.get_output_embeddings()
    head_trains = head is not None and head.weight.requires_grad and positions < scored
    state = 2 * _bytes(trainable)
    update = 2 * max(_bytes([p]) for p in trainable) if trainable else 0
    return MemoryEstimate(
        parameters=_bytes(model.parameters()),
        gradients=_bytes(trainable),
        optimizer=state + 4 * len(trainable) if optimizer == "adamw" else 0,
        activations=tokens * _activation_bytes_per_token(config, base, model, b, gradient_checkpointing),
        logits=positions * config.vocab_size * 16,
        reference=_bytes(model.parameters()) * check_int(reference_copies, "reference_copies", 0),
        advice=_training_advice(lora, gradient_checkpointing, logits_chunk, compute),
        head_gradient=_bytes([head.weight]) if head_trains else 0,
        update=update,
        leash_kl=leash_positions * config.vocab_size * 12,
    )


#: Config fields of the residual dropout probability (OPT, GPT-2, Falcon and BLOOM).
_DROPOUT_FIELDS = ("dropout", "resid_pdrop", "hidden_dropout")


def _activation_bytes_per_token(config, base, model, b: int, gradient_checkpointing: bool) -> int:
    """Bytes autograd keeps per token of the batch, for a pre-norm decoder (b: bytes per
    element of the compute dtype; h: hidden size, kv: the key/value width (KV heads times
    head size), i: MLP width, n: attention heads). Per decoder layer, the tensors saved:

    - each of the two norms: RMSNorm (LLaMA-style, recognised by its class name) upcasts its
      input to float32 and keeps it (``max(4, b) h``), and when its weight trains also the
      normalised input (``b h``); LayerNorm keeps its input (``b h``);
    - residual dropout (a config's ``dropout``/``resid_pdrop``/``hidden_dropout`` > 0, training
      mode): twice per layer a noise tensor in the input's dtype (``b h``; PyTorch's CPU
      dropout multiplies by it);
    - attention (SDPA): q, the attention output and k, v at their own width (grouped KV heads
      are not repeated), ``b (2 h + 2 kv)``, and a float32 log-sum-exp per head (``4 n``);
    - MLP: gated (a ``gate`` projection): the activation's input and both factors of the
      product, ``3 b i``; else ReLU keeps its output, other activations their input, ``b i``;
    - the linear layers' inputs, kept for their weight gradients: with trainable weights one
      per distinct input, the attention block's and the MLP's (``2 b h``; the output
      projection's input is the attention output counted above) plus the down projection's
      (``b i``; none for ReLU, whose kept output is that input). LoRA (base weights frozen,
      not kept): each adapted linear keeps its input cast to the adapter's dtype (``a in``,
      its own copy when ``a != b``; when ``a == b`` the shared inputs as with trainable
      weights) and its rank-r bottleneck (``a r``).

    Outside the layers: the final norm (as above) and the head's input at the scored
    positions (``b h``). Gradient checkpointing keeps one ``b h`` per layer (each layer's
    input) plus one layer's tensors while it is recomputed."""
    h, layers = config.hidden_size, config.num_hidden_layers
    heads = getattr(config, "num_attention_heads", None) or 1
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    width = _mlp_width(config)
    # peft wraps in place: a LoRA model's linear is ``...gate_proj.base_layer``
    gated = any("gate" in part for name, m in base.named_modules() if isinstance(m, torch.nn.Linear)
                for part in name.split("."))
    relu = "relu" in (str(getattr(config, "hidden_act", "")), str(getattr(config, "activation_function", "")))
    norms = [m for m in base.modules() if "norm" in type(m).__name__.lower() and getattr(m, "weight", None) is not None]
    rms = bool(norms) and "rms" in type(norms[0]).__name__.lower()
    trains = base.get_input_embeddings().weight.requires_grad  # full fine-tuning
    norm = (max(4, b) * h + (b * h if trains else 0)) if rms else b * h
    dropout = 2 * b * h if any((getattr(config, f, 0) or 0) > 0 for f in _DROPOUT_FIELDS) else 0
    attention = b * (2 * h + 2 * kv) + 4 * heads
    mlp = 3 * b * width if gated else b * width
    shared_inputs = b * (2 * h + (0 if relu and not gated else width))
    adapters = [m for m in model.modules() if hasattr(m, "lora_A")]
    same_dtype = all(d.weight.dtype.itemsize == b for m in adapters for d in m.lora_A.values())
    if adapters:
        inputs = sum(_lora_bytes_per_token(m, b) for m in adapters) // layers + (shared_inputs if same_dtype else 0)
    else:
        inputs = shared_inputs if trains else 0
    layer = 2 * norm + dropout + attention + mlp + inputs
    outside = norm + b * h
    if gradient_checkpointing:
        return layers * b * h + layer + outside
    return layers * layer + outside


def _lora_bytes_per_token(module, b: int) -> int:
    """One adapted linear: its rank-r bottleneck, and its input cast to the adapter's dtype
    when that differs from the compute dtype's ``b`` bytes."""
    total = 0
    for down in module.lora_A.values():
        a = down.weight.dtype.itemsize
        total += a * (down.out_features + (down.in_features if a != b else 0))
    return total


def _mlp_width(config) -> int:
    """The MLP's inner width: ``intermediate_size`` (LLaMA, GPT-NeoX), ``ffn_dim`` (OPT),
    ``n_inner`` (GPT-2), else 4 h."""
    for name in ("intermediate_size", "ffn_dim", "n_inner"):
        if getattr(config, name, None):
            return getattr(config, name)
    return 4 * config.hidden_size


def _training_advice(lora, gradient_checkpointing: bool, logits_chunk, dtype: torch.dtype) -> tuple[str, ...]:
    advice = ["lower batch_size or seq_len"]
    if lora is None:
        advice.append("train LoRA adapters (lora=LoraSettings())")
    if not gradient_checkpointing:
        advice.append("enable gradient_checkpointing")
    if logits_chunk is None:
        advice.append("chunk the log-softmax (logits_chunk)")
    if dtype == torch.float32:
        advice.append("use bf16")
    return tuple(advice)


def _config(config_or_dir) -> PretrainedConfig:
    if isinstance(config_or_dir, (str, os.PathLike)):
        return read_config(config_or_dir)
    return as_config(config_or_dir)


def _dtype(dtype) -> torch.dtype:
    return resolve_dtype(dtype, resolve_device("auto"))


def _meta_model(config: PretrainedConfig, dtype: torch.dtype, lora: LoraSettings | None):
    """(base model, model with LoRA or the base itself) on the meta device: shapes and
    dtypes only, no memory. peft wraps the base in place."""
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return base, apply_lora(base, lora) if lora is not None else base


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# --------------------------------------------------------------------- available memory


def available_memory(device: str | torch.device = "auto") -> int:
    """Bytes that can still be allocated on ``device``.

    CUDA: the free memory ``torch.cuda.mem_get_info`` reports. CPU (Linux):
    ``MemAvailable`` of ``/proc/meminfo``, capped by the cgroup's headroom (its limit
    minus its working set, i.e. usage less inactive file cache) when a limit is set.
    Raises ``RuntimeError`` where this cannot be told (another device type or OS).
    """
    target = resolve_device(device)
    if target.type == "cuda":
        return torch.cuda.mem_get_info(target)[0]
    meminfo = Path("/proc/meminfo")
    if target.type != "cpu" or not meminfo.is_file():
        raise RuntimeError(f"cannot tell the available memory of {target} here: pass check_memory=False "
                           "or check an estimate against a number of your own")
    fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
    available = int(fields["MemAvailable"].split()[0]) * 1024
    return min(available, _cgroup_headroom())


#: (limit, usage, stat file, inactive-file key) of cgroup v2 and v1.
_CGROUPS = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat", "inactive_file"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
     "/sys/fs/cgroup/memory/memory.stat", "total_inactive_file"),
)


def _cgroup_headroom() -> int | float:
    """Limit minus working set of this process's memory cgroup; infinity without a limit."""
    for limit_file, usage_file, stat_file, inactive_key in _CGROUPS:
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text())
            stats = dict(line.split()[:2] for line in Path(stat_file).read_text().splitlines() if line.strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 2**62:  # v1 writes "no limit" as a huge number
            return float("inf")
        return int(limit) - (usage - int(stats.get(inactive_key, 0)))
    return float("inf")
