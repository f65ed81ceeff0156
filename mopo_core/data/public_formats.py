"""Loaders for public preference formats, mapped onto :class:`~mopo_core.data.preferences.PreferenceDataset`.

Formats (``load_public(path, format=...)``; ``"auto"`` sniffs the keys of the first rows):

``"pku"``
    PKU-SafeRLHF rows ``{prompt, response_0, response_1, better_response_id,
    safer_response_id, ...}``: two objectives, ``("helpfulness", "harmlessness")`` in that
    order (helpfulness is the primary). ``response_a`` is ``response_0``; a label is 1.0
    when the row's id is 0 (``response_0`` wins) and 0.0 when it is 1.
``"hh"``
    Anthropic HH-RLHF rows ``{chosen, rejected}``, each a full transcript
    (``"\\n\\nHuman: ... \\n\\nAssistant: ..."``). The prompt is the transcript the two share,
    up to and including the last ``"\\n\\nAssistant:"`` in that shared part; the responses
    are the rest of each transcript (so they usually start with a space). A response that
    continues with a ``"\\n\\nHuman:"`` turn means the two transcripts differ before the
    final answer: that row is an error. One objective.
``"sharegpt"``
    LLaMA-Factory / ShareGPT DPO rows ``{conversations: [{from, value}, ...], chosen:
    {from, value}, rejected: {from, value}}`` (optional top-level ``system``). Roles:
    ``system`` (first only), then ``human``/``user`` and ``gpt``/``assistant`` alternating,
    ending with a human turn. One objective.
``"alpaca"``
    Alpaca-style DPO rows ``{instruction, input?, system?, chosen, rejected}`` (strings);
    the prompt is ``instruction``, plus ``"\\n" + input`` when ``input`` is non-blank
    (LLaMA-Factory's convention). One objective.

For the one-objective formats ``response_a`` is the chosen response and every label is
1.0; the objective is named by the caller (default ``"helpfulness"``; for ``"hh"`` it
comes from the file name, ``harmless``/``helpful``). K = 1 means MOPO has no secondary
objective: such a dataset serves single-objective trainers (SFT, DPO, IPO) or is combined
with other data; :meth:`PublicDataset.report` says so.

A prompt made of one user turn is that turn's text; a longer conversation (or one with a
system message) is role-tagged text (``"System: ..."``, ``"Human: ..."``,
``"Assistant: ..."`` blocks separated by a blank line). The same conversation as chat
messages ``[{"role": "system"|"user"|"assistant", "content": str}]`` (for chat
templates) is kept in the pair's metadata under ``"messages"``.

Files are UTF-8 JSON Lines or one JSON array, optionally gzip-compressed (detected from
the content, not the name; decompressed as a stream, at most :data:`MAX_DECOMPRESSED_BYTES`,
and a corrupt gzip is a ``ValueError`` naming the file). JSON Lines are read as a stream:
runs of blank lines cost neither time nor memory. Rows are numbered from 1: line numbers for JSON Lines, array
index + 1 for an array. Bad rows raise one ``ValueError`` naming the file, each row and the
field (all errors collected, the first ``MAX_LISTED_ERRORS`` listed, as in
:mod:`mopo_core.data.preferences`). Nothing is dropped silently: duplicates are kept and
counted; ``skip_bad_rows=True`` leaves bad rows out only on request, and lists them.
"""
from __future__ import annotations

import codecs
import gzip
import itertools
import json
import os
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from mopo_core.data.preferences import (
    MAX_LISTED_ERRORS,
    READ_CHUNK_BYTES,
    TIE,
    PreferenceDataset,
    PreferencePair,
    numbered_lines,
    parse_json_lines,
    _describe,
    _objective_names,
    _raise_row_errors,
    _text_problem,
    _unique_keys,
)
from mopo_core.validation import format_bytes

#: The formats :func:`load_public` reads (besides ``"auto"``).
FORMATS = ("pku", "hh", "sharegpt", "alpaca")
#: PKU-SafeRLHF's objectives, primary first, and the row field holding each one's label.
PKU_OBJECTIVES = ("helpfulness", "harmlessness")
PKU_LABEL_FIELDS = ("better_response_id", "safer_response_id")
#: The default objective of the ShareGPT and alpaca formats.
DEFAULT_OBJECTIVE = "helpfulness"
#: How many rows the format sniffer looks at.
SNIFF_ROWS = 5
#: The most bytes a gzip file may decompress to (1 GiB); a bigger one is refused, not read.
MAX_DECOMPRESSED_BYTES = 2**30

_PKU_TEXTS = ("prompt", "response_0", "response_1")
#: Optional PKU fields that must have this type when present (kept as metadata).
_PKU_TYPED = {"is_response_0_safe": bool, "is_response_1_safe": bool,
              "response_0_severity_level": int, "response_1_severity_level": int}
_HH_ASSISTANT = "\n\nAssistant:"
_HH_HUMAN = "\n\nHuman:"
#: ShareGPT ``from`` tags and the chat role each one stands for.
_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_ROLE_TAGS = {"system": "System", "user": "Human", "assistant": "Assistant"}
_SHAREGPT_KEYS = ("conversations", "chosen", "rejected", "system")
_ALPACA_KEYS = ("instruction", "input", "system", "chosen", "rejected")


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class PublicDataset:
    """A public file loaded as a :class:`PreferenceDataset`, with what the schema has no room for.

    ``metadata[i]`` belongs to ``dataset[i]``: for ``"pku"`` every row field other than the
    prompt, the two responses and the two label ids (safety flags, harm categories,
    severity levels, sources, hashes), as in the file; for ``"hh"`` any keys besides
    ``chosen``/``rejected``; for ``"sharegpt"`` and ``"alpaca"`` ``{"messages": [...],
    "extra": {...}}`` (the prompt as chat messages, and the row's other keys).
    ``skipped`` holds ``(row, problem)`` for the rows left out with ``skip_bad_rows=True``.
    """

    dataset: PreferenceDataset
    metadata: tuple[dict, ...]
    format: str
    source: str
    skipped: tuple[tuple[int, str], ...] = ()
    notes: tuple[str, ...] = ()

    def __post_init__(self):
        if len(self.metadata) != len(self.dataset):
            raise ValueError(f"{self.source}: {len(self.metadata)} metadata entries for {len(self.dataset)} pairs")

    def report(self) -> dict:
        """:meth:`PreferenceDataset.report` plus ``file``, ``format``, ``label_balance``,
        ``n_objective_conflicts``, ``duplicates``, ``label_conflicts``, ``n_skipped`` and ``skipped``.

        ``label_balance[objective]`` counts pairs by winner: ``"a"`` (label > 0.5), ``"b"``
        (< 0.5) and ``"tie"``. ``n_objective_conflicts`` counts pairs that one objective
        decides for ``response_a`` and another for ``response_b``. ``duplicates`` and
        ``label_conflicts`` (duplicates whose labels contradict the pair they repeat) list
        ``[first origin, repeat origin]``, ``skipped`` ``"row <n>: <problem>"``, each the first
        ``MAX_LISTED_ERRORS`` entries; ``n_duplicates``, ``n_label_conflicts`` and ``n_skipped``
        (rows left out) give the totals. Everything is JSON-serializable.
        """
        base = self.dataset.report()
        duplicates = [[self.dataset[i].origin, self.dataset[j].origin] for i, j in self.dataset.duplicates()]
        conflicts = [[self.dataset[i].origin, self.dataset[j].origin] for i, j in self.dataset.label_conflicts()]
        return {
            "file": self.source,
            "format": self.format,
            **base,
            "label_balance": _label_balance(self.dataset),
            "n_objective_conflicts": sum(_conflicting(pair.labels) for pair in self.dataset),
            "duplicates": duplicates[:MAX_LISTED_ERRORS],
            "label_conflicts": conflicts[:MAX_LISTED_ERRORS],
            "n_skipped": len({row for row, _ in self.skipped}),
            "skipped": [f"row {row}: {problem}" for row, problem in self.skipped[:MAX_LISTED_ERRORS]],
            "notes": base["notes"] + list(self.notes),
        }


def _label_balance(dataset: PreferenceDataset) -> dict:
    balance = {name: {"a": 0, "b": 0, "tie": 0} for name in dataset.objectives}
    for pair in dataset:
        for name, label in zip(dataset.objectives, pair.labels, strict=True):
            balance[name]["tie" if label == TIE else "a" if label > TIE else "b"] += 1
    return balance


def _conflicting(labels: tuple[float, ...]) -> bool:
    return any(label > TIE for label in labels) and any(label < TIE for label in labels)


def format_report(report: dict) -> str:
    """A :meth:`PublicDataset.report` as plain text lines (for the command line)."""
    objectives = ", ".join(f"{name} (primary)" if k == 0 else name for k, name in enumerate(report["objectives"]))
    balance = "; ".join(f"{name}: a {b['a']} / b {b['b']} / tie {b['tie']}"
                        for name, b in report["label_balance"].items())
    lines = [
        f"file: {report['file']}",
        f"format: {report['format']}",
        f"pairs: {report['n_pairs']}  prompts: {report['n_prompts']}",
        f"objectives (K = {report['K']}): {objectives}",
        f"single objective: {'yes' if report['single_objective'] else 'no'}",
        f"label kind: {', '.join(f'{n}: {kind}' for n, kind in report['label_kind'].items())}",
        f"label balance (winner): {balance}",
        f"objective conflicts: {report['n_objective_conflicts']}",
        f"duplicates: {report['n_duplicates']}",
        *(f"  {dup} repeats {first}" for first, dup in report["duplicates"]),
        f"label conflicts (a duplicate with other labels): {report['n_label_conflicts']}",
        f"skipped rows: {report['n_skipped']}",
        *(f"  {entry}" for entry in report["skipped"]),
        *(f"note: {note}" for note in report["notes"]),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


def load_public(path, format: str = "auto", objective: str | None = None,
                skip_bad_rows: bool = False) -> PublicDataset:
    """Load a public preference file (formats and conventions in the module docstring).

    ``format`` is one of :data:`FORMATS` or ``"auto"``. ``objective`` names the one
    objective of ``"hh"``, ``"sharegpt"`` and ``"alpaca"`` files; it is refused for
    ``"pku"``, whose two objectives are fixed (use ``.dataset.select(...)`` to keep one).
    Bad rows raise one ``ValueError``; with ``skip_bad_rows=True`` they are left out and
    listed in :attr:`PublicDataset.skipped` and the report instead.
    """
    path = Path(path)
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format: unknown format {format!r} (expected auto or one of {', '.join(FORMATS)})")
    rows, errors = _read_rows(path)
    if not rows:
        if errors:
            _raise_row_errors(errors, path.name, str(path))
        raise ValueError(f"{path}: empty (no rows)")
    fmt = _sniff(path, rows) if format == "auto" else format
    objectives = _objectives(fmt, objective, path)
    return _build(path, fmt, objectives, rows, errors, skip_bad_rows)


def _objectives(fmt: str, objective: str | None, path: Path) -> tuple[str, ...]:
    if fmt == "pku":
        if objective is not None:
            raise ValueError(f"objective={objective!r}: PKU-SafeRLHF rows carry both objectives "
                             f"({', '.join(PKU_OBJECTIVES)}); keep one with .dataset.select([...])")
        return PKU_OBJECTIVES
    if objective is not None:
        if not isinstance(objective, str):
            raise ValueError(f"objective: expected one objective name (a string), got {_describe(objective)}")
        return _objective_names(objective, "objective")
    return (_hh_objective(path),) if fmt == "hh" else (DEFAULT_OBJECTIVE,)


def _hh_objective(path: Path) -> str:
    """HH-RLHF's objective from the file name: ``harmless`` -> harmlessness, ``helpful`` -> helpfulness."""
    name = path.name.lower()
    hints = [objective for hint, objective in (("harmless", "harmlessness"), ("helpful", "helpfulness"))
             if hint in name]
    if len(hints) != 1:
        raise ValueError(f"{path}: cannot tell the HH-RLHF objective from the file name (expected 'harmless' or "
                         "'helpful' in it); pass objective=... (--objective NAME)")
    return hints[0]


def _sniff(path: Path, rows: list[tuple[int, object]]) -> str:
    """The format of the first JSON-object row (of the first :data:`SNIFF_ROWS`) whose keys tell it."""
    seen: set[str] = set()
    for _, record in rows[:SNIFF_ROWS]:
        if isinstance(record, Mapping):
            if (fmt := _format_of(set(record))) is not None:
                return fmt
            seen.update(record)
    keys = ", ".join(sorted(seen)) if seen else "none (no JSON object in the first rows)"
    raise ValueError(f"{path}: unknown preference format; keys seen in the first {SNIFF_ROWS} rows: {keys} "
                     f"(known: {', '.join(FORMATS)}; pass format=... to choose one)")


def _format_of(keys: set[str]) -> str | None:
    if keys & set(PKU_LABEL_FIELDS) or {"response_0", "response_1"} <= keys:
        return "pku"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys:
        return "alpaca"
    if {"chosen", "rejected"} <= keys:
        return "hh"
    return None


# --------------------------------------------------------------------------- reading


def _read_rows(path: Path) -> tuple[list[tuple[int, object]], list[tuple[int, str]]]:
    """``(rows, errors)``: ``(1-based row, record)`` and ``(row, problem)`` for unreadable rows.

    A gzip file is decompressed as it is read. Content starting with ``[`` is one JSON
    array (rows numbered by index + 1, a syntax error fails the whole file); anything else is
    JSON Lines (line numbers; blank lines carry no row).
    """
    chunks = _content_chunks(path)
    first = next(chunks, b"").removeprefix(codecs.BOM_UTF8)
    blank_lines = 0
    while first and not first.strip():  # leading blank lines: counted, not kept
        blank_lines += first.count(b"\n")
        first = next(chunks, b"")
    if first.lstrip()[:1] == b"[":
        return _json_array_rows(path, first + b"".join(chunks)), []
    lines = numbered_lines(itertools.chain([first], chunks))
    return parse_json_lines((number + blank_lines, line) for number, line in lines)


def _content_chunks(path: Path) -> Iterator[bytes]:
    """The file's content in chunks, gunzipped when it starts with the gzip magic bytes;
    ``ValueError`` naming ``path`` for an unreadable file, a corrupt gzip or one that
    decompresses to more than :data:`MAX_DECOMPRESSED_BYTES`."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the file ({exc})") from None
    with handle:
        compressed = handle.read(2) == b"\x1f\x8b"
        handle.seek(0)
        source = gzip.GzipFile(fileobj=handle, mode="rb") if compressed else handle
        total = 0
        while True:
            try:
                chunk = source.read(READ_CHUNK_BYTES)
            except (OSError, EOFError, zlib.error) as exc:
                problem = "not a valid gzip file" if compressed else "cannot read the file"
                raise ValueError(f"{path}: {problem} ({exc or type(exc).__name__})") from None
            if not chunk:
                return
            total += len(chunk)
            if compressed and total > MAX_DECOMPRESSED_BYTES:
                raise ValueError(f"{path}: decompresses to more than {format_bytes(MAX_DECOMPRESSED_BYTES)}, the "
                                 "limit for a gzip file (decompress it first to read it anyway)")
            yield chunk


def _json_array_rows(path: Path, data: bytes) -> list[tuple[int, object]]:
    try:
        records = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise ValueError(f"{path}: invalid JSON (nested too deeply to read)") from None
    except ValueError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from None
    return list(enumerate(records, start=1))


# --------------------------------------------------------------------------- rows -> dataset


def _build(path: Path, fmt: str, objectives: tuple[str, ...], rows, errors, skip_bad_rows: bool) -> PublicDataset:
    """Parse every row with the format's parser; raise for bad rows unless ``skip_bad_rows``."""
    parse = _PARSERS[fmt]
    errors = list(errors)
    pairs, metadata = [], []
    for row, record in rows:
        if not isinstance(record, Mapping):
            errors.append((row, f"expected a JSON object, got {_describe(record)}"))
            continue
        parsed, problems = parse(record)
        errors.extend((row, problem) for problem in problems)
        if parsed is not None:
            prompt, response_a, response_b, labels, meta = parsed
            pairs.append(PreferencePair(prompt, response_a, response_b, labels, f"{path.name}:row {row}"))
            metadata.append(meta)
    if errors and not skip_bad_rows:
        _raise_row_errors(errors, path.name, str(path))
    if not pairs:
        raise ValueError(f"{path}: no usable rows ({len(errors)} error(s), all rows skipped)")
    dataset = PreferenceDataset(objectives, tuple(pairs))
    skipped = tuple(sorted(errors, key=lambda e: e[0]))
    notes = _notes(fmt, dataset) + ([f"{len({row for row, _ in skipped})} bad row(s) left out (skip_bad_rows)"]
                                    if skipped else [])
    return PublicDataset(dataset, tuple(metadata), fmt, str(path), skipped, tuple(notes))


def _notes(fmt: str, dataset: PreferenceDataset) -> list[str]:
    if fmt == "pku":
        return []
    notes = [("response_a is the chosen response in every pair (label 1.0); shuffle a/b if a trainer is "
              "sensitive to the order")]
    if fmt == "hh":
        continued = [pair.origin for pair in dataset if _HH_ASSISTANT in pair.response_a + pair.response_b]
        if continued:
            notes.append(f"{len(continued)} pair(s) have a response that itself contains '\\n\\nAssistant:' "
                         f"(kept as part of the response): {', '.join(continued[:MAX_LISTED_ERRORS])}")
    return notes


# --------------------------------------------------------------------------- field checks


def _missing(record: Mapping, keys) -> list[str]:
    return [f"field '{key}': missing" for key in keys if key not in record]


def _text_fields(record: Mapping, keys) -> list[str]:
    return [f"field '{key}': {why}" for key in keys if key in record if (why := _text_problem(record[key]))]


def _identical(first: str, a, second: str, b) -> list[str]:
    """The identical-responses problem, when both are valid texts and equal."""
    if _text_problem(a) is None and _text_problem(b) is None and a == b:
        return [f"field '{second}': identical to {first} (a pair needs two different responses)"]
    return []


def _type_problems(record: Mapping, types: Mapping[str, type]) -> list[str]:
    """Present fields of ``types`` that have another type (``bool`` is not an ``int`` here)."""
    return [f"field '{key}': expected {kind.__name__}, got {_describe(record[key])}"
            for key, kind in types.items()
            if key in record and (not isinstance(record[key], kind) or (kind is int and isinstance(record[key], bool)))]


# --------------------------------------------------------------------------- PKU-SafeRLHF


def _parse_pku(record: Mapping):
    """``((prompt, response_0, response_1, labels, metadata) or None, problems)``."""
    problems = _missing(record, _PKU_TEXTS + PKU_LABEL_FIELDS) + _text_fields(record, _PKU_TEXTS)
    problems += _identical("response_0", record.get("response_0"), "response_1", record.get("response_1"))
    problems += [f"field '{key}': expected 0 or 1 (the id of the preferred response), got {record[key]!r}"
                 for key in PKU_LABEL_FIELDS if key in record and not _is_response_id(record[key])]
    problems += _type_problems(record, _PKU_TYPED)
    if problems:
        return None, problems
    labels = tuple(1.0 - record[key] for key in PKU_LABEL_FIELDS)
    metadata = {key: value for key, value in record.items() if key not in _PKU_TEXTS + PKU_LABEL_FIELDS}
    return (record["prompt"], record["response_0"], record["response_1"], labels, metadata), []


def _is_response_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in (0, 1)


# --------------------------------------------------------------------------- HH-RLHF


def _parse_hh(record: Mapping):
    """``((prompt, chosen, rejected, (1.0,), metadata) or None, problems)`` (split in the module docstring)."""
    problems = _missing(record, ("chosen", "rejected")) + _text_fields(record, ("chosen", "rejected"))
    if problems:
        return None, problems
    split, problems = _split_transcripts(record["chosen"], record["rejected"])
    if split is None:
        return None, problems
    metadata = {key: value for key, value in record.items() if key not in ("chosen", "rejected")}
    return (*split, (1.0,), metadata), []


def _split_transcripts(chosen: str, rejected: str) -> tuple[tuple[str, str, str] | None, list[str]]:
    """``((prompt, chosen response, rejected response) or None, problems)`` of two HH transcripts."""
    shared = os.path.commonprefix([chosen, rejected])
    end = shared.rfind(_HH_ASSISTANT)
    if end < 0:
        return None, [("field 'rejected': chosen and rejected share no conversation up to an "
                       "'\\n\\nAssistant:' turn (they differ before the first one)")]
    cut = end + len(_HH_ASSISTANT)
    prompt, responses = chosen[:cut], {"chosen": chosen[cut:], "rejected": rejected[cut:]}
    problems = [f"field '{key}': the transcripts differ before the final Assistant turn (this one goes on "
                f"with a '\\n\\nHuman:' turn after the shared prompt)" for key, text in responses.items()
                if _HH_HUMAN in text]
    problems += [f"field '{key}': the response after the shared prompt is empty" for key, text in responses.items()
                 if not text.strip()]
    problems += _identical("chosen", responses["chosen"], "rejected", responses["rejected"])
    if problems:
        return None, problems
    return (prompt, responses["chosen"], responses["rejected"]), []


# --------------------------------------------------------------------------- ShareGPT / alpaca


def _parse_sharegpt(record: Mapping):
    """``((prompt, chosen, rejected, (1.0,), metadata) or None, problems)``."""
    problems = _missing(record, _SHAREGPT_KEYS[:3]) + _text_fields(record, ("system",))
    messages, conversation_problems = _conversation(record["conversations"]) if "conversations" in record else ([], [])
    problems += conversation_problems
    if "system" in record and messages and messages[0]["role"] == "system":
        problems.append("field 'system': a system message is also the first conversation turn (give it once)")
    replies = {key: _reply(record[key], key) for key in ("chosen", "rejected") if key in record}
    problems += [problem for _, reply_problems in replies.values() for problem in reply_problems]
    texts = {key: text for key, (text, _) in replies.items()}
    problems += _identical("chosen", texts.get("chosen"), "rejected", texts.get("rejected"))
    if problems:
        return None, problems
    if "system" in record:
        messages = [{"role": "system", "content": record["system"]}, *messages]
    extra = {key: value for key, value in record.items() if key not in _SHAREGPT_KEYS}
    metadata = {"messages": messages, "extra": extra}
    return (_prompt_text(messages), texts["chosen"], texts["rejected"], (1.0,), metadata), []


def _conversation(value) -> tuple[list[dict], list[str]]:
    """ShareGPT ``conversations`` as chat messages, and its problems (roles, texts, turn order)."""
    if not isinstance(value, list) or not value:
        got = _describe(value) if not isinstance(value, list) else "an empty list"
        return [], [f"field 'conversations': expected a non-empty list of {{from, value}} messages, got {got}"]
    messages, problems = [], []
    for i, item in enumerate(value):
        message, item_problems = _message(item, f"conversations[{i}]")
        messages.append(message)
        problems += item_problems
    if problems:
        return [], problems
    return messages, _turn_order_problems(messages, value)


def _message(item, name: str) -> tuple[dict, list[str]]:
    """One ``{from, value}`` message as ``{role, content}``, and its problems."""
    if not isinstance(item, Mapping):
        return {}, [f"field '{name}': expected an object with 'from' and 'value', got {_describe(item)}"]
    problems = [f"field '{name}.{key}': missing" for key in ("from", "value") if key not in item]
    tag = item.get("from")
    if "from" in item and tag not in _SHAREGPT_ROLES:
        problems.append(f"field '{name}.from': unknown role {tag!r} (expected one of {', '.join(_SHAREGPT_ROLES)})")
    if "value" in item and (why := _text_problem(item["value"])):
        problems.append(f"field '{name}.value': {why}")
    if problems:
        return {}, problems
    return {"role": _SHAREGPT_ROLES[tag], "content": item["value"]}, []


def _turn_order_problems(messages: list[dict], raw: list) -> list[str]:
    """An optional leading system message, then user and assistant alternating, ending with user."""
    start = 1 if messages[0]["role"] == "system" else 0
    for i in range(start, len(messages)):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if messages[i]["role"] != expected:
            tag = "human" if expected == "user" else "gpt"
            return [(f"field 'conversations[{i}].from': expected a {tag} turn here (after an optional system "
                     f"message, human and gpt alternate), got {raw[i]['from']!r}")]
    if messages[-1]["role"] != "user":
        return ["field 'conversations': the last turn must be from human (the prompt the responses answer)"]
    return []


def _reply(value, name: str) -> tuple[str, list[str]]:
    """A ``chosen``/``rejected`` ``{from, value}`` assistant message: ``(text, problems)``."""
    message, problems = _message(value, name)
    if not problems and message["role"] != "assistant":
        problems = [f"field '{name}.from': expected an assistant (gpt) message, got {value['from']!r}"]
    return message.get("content", ""), problems


def _parse_alpaca(record: Mapping):
    """``((prompt, chosen, rejected, (1.0,), metadata) or None, problems)``."""
    problems = _missing(record, ("instruction", "chosen", "rejected"))
    problems += _text_fields(record, ("instruction", "system", "chosen", "rejected"))
    if "input" in record and not isinstance(record["input"], str):
        problems.append(f"field 'input': expected a string, got {_describe(record['input'])}")
    if "history" in record:
        problems.append("field 'history': multi-turn alpaca rows are not supported (use the ShareGPT form)")
    problems += _identical("chosen", record.get("chosen"), "rejected", record.get("rejected"))
    if problems:
        return None, problems
    query = record["instruction"] + (f"\n{record['input']}" if record.get("input", "").strip() else "")
    messages = [{"role": "system", "content": record["system"]}] if "system" in record else []
    messages.append({"role": "user", "content": query})
    extra = {key: value for key, value in record.items() if key not in _ALPACA_KEYS}
    metadata = {"messages": messages, "extra": extra}
    return (_prompt_text(messages), record["chosen"], record["rejected"], (1.0,), metadata), []


def _prompt_text(messages: list[dict]) -> str:
    """One user message: its text; otherwise role-tagged blocks separated by a blank line."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"{_ROLE_TAGS[m['role']]}: {m['content']}" for m in messages)


_PARSERS = {"pku": _parse_pku, "hh": _parse_hh, "sharegpt": _parse_sharegpt, "alpaca": _parse_alpaca}
