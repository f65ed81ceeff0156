"""The preference data layer: one schema for K-objective pairwise preferences.

A dataset is a tuple of K objective names (objective 0 is the primary) and a tuple of
pairs ``(prompt, response_a, response_b, labels)`` with one label per objective, in the
dataset's objective order. A label is ``P(response_a preferred)`` on that objective:
1.0 means ``response_a`` wins, 0.0 means ``response_b`` wins, 0.5 is a tie, and any other
value in [0, 1] is a soft label, kept as is (MOPO.md section 5 uses it directly as the
one-comparison win-rate estimate ``w_k(y_a) = l_k``, ``w_k(y_b) = 1 - l_k``).

On disk (JSONL line or Parquet row) a record is::

    {"prompt": str, "response_a": str, "response_b": str,
     "labels": {"<objective name>": label, ...}}

``"labels": [label, ...]`` is accepted when the objective names are passed separately.
Bad input raises ``ValueError`` naming the file, the 1-based row and the field; all row
errors are collected into one message. Nothing is silently dropped, repaired or clipped.
Texts must be valid Unicode: bytes that are not UTF-8, and lone surrogates (a JSON
``"\ud800"`` escape), are row errors, so no tokenizer ever sees them. JSON nested too deeply
to parse is a row error too.
"""
from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mopo_core.validation import ATOL, as_finite_array, check_int

#: The keys of a record, in the order they are written.
FIELDS = ("prompt", "response_a", "response_b", "labels")
#: File suffixes :func:`load_preferences` and :func:`save_preferences` understand.
SUFFIXES = (".jsonl", ".parquet")
#: How many row errors one ``ValueError`` lists (the total is always given).
MAX_LISTED_ERRORS = 20
#: The label of a tie.
TIE = 0.5
#: Bytes read from a file at a time by :func:`numbered_lines`.
READ_CHUNK_BYTES = 1 << 20
#: Labels closer than this are the same label (a duplicate's ``1 - l`` after an a/b swap is rounded).
LABEL_ATOL = 1e-12


# --------------------------------------------------------------------------- field checks


def _text_problem(value) -> str | None:
    """Why ``value`` is not usable as a prompt or response text, or ``None``."""
    if not isinstance(value, str):
        return f"expected a string, got {_describe(value)}"
    if not value.strip():
        return "empty or whitespace-only text"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (f"not valid Unicode text: lone surrogate U+{ord(value[exc.start]):04X} at character "
                    f"{exc.start} (a broken \\u escape?)")
    return None


def _label_problem(value) -> str | None:
    """Why ``value`` is not a label (a finite number in [0, 1]), or ``None``."""
    if value is None:
        return "missing (null)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"{value!r} is not a number (got {type(value).__name__})"
    if math.isnan(value):
        return "NaN is not a valid label"
    if not 0.0 <= value <= 1.0:
        return f"{value!r} is not in [0, 1]"
    return None


def _text_problems(texts: Mapping[str, object]) -> list[str]:
    """Problems of the given texts (``{field: value}``), each as ``"field '<name>': <why>"``.

    Also flags ``response_b`` identical to ``response_a`` when both are present and valid.
    """
    problems = [f"field '{name}': {why}" for name, value in texts.items() if (why := _text_problem(value))]
    responses = [texts.get("response_a"), texts.get("response_b")]
    if all(_text_problem(text) is None for text in responses) and responses[0] == responses[1]:
        problems.append("field 'response_b': identical to response_a (a pair needs two different responses)")
    return problems


def _describe(value) -> str:
    return "None" if value is None else type(value).__name__


def _objective_names(value, name: str) -> tuple[str, ...]:
    """Validate objective names (a bare string is one name); return them as a tuple."""
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names:
        raise ValueError(f"{name}: need at least one objective")
    for entry in names:
        if not isinstance(entry, str) or not entry.strip():
            raise ValueError(f"{name}: objective names must be non-empty strings, got {entry!r}")
    seen: set[str] = set()
    for entry in names:
        if entry in seen:
            raise ValueError(f"{name}: duplicate objective {entry!r}")
        seen.add(entry)
    return names


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class PreferencePair:
    """One comparison of two responses to a prompt, labelled on each objective.

    ``labels[k]`` is ``P(response_a preferred)`` on objective k (1.0: a wins, 0.0: b wins,
    0.5: tie, other values in [0, 1]: soft). ``origin`` (e.g. ``"prefs.jsonl:row 12"``)
    is for messages and reports only: it takes no part in equality or hashing.
    """

    prompt: str
    response_a: str
    response_b: str
    labels: tuple[float, ...]
    origin: str = field(default="", compare=False)

    def __post_init__(self):
        texts = {"prompt": self.prompt, "response_a": self.response_a, "response_b": self.response_b}
        problems = _text_problems(texts) + self._label_problems()
        if problems:
            raise ValueError(f"{self.origin or 'PreferencePair'}: " + "; ".join(problems))
        object.__setattr__(self, "labels", tuple(float(v) for v in self.labels))

    def _label_problems(self) -> list[str]:
        if isinstance(self.labels, (str, bytes, Mapping)) or not isinstance(self.labels, (Sequence, np.ndarray)):
            return [f"field 'labels': expected a sequence of numbers, got {_describe(self.labels)}"]
        if len(self.labels) == 0:
            return ["field 'labels': need at least one label"]
        return [f"field 'labels[{k}]': {why}" for k, v in enumerate(self.labels) if (why := _label_problem(v))]


@dataclass(frozen=True)
class PreferenceDataset:
    """K named objectives and pairs whose ``labels`` follow that order (objective 0 is the primary).

    Immutable; ``len``, iteration, indexing (an int gives a pair, a slice a dataset) and
    ``==`` (objectives and pairs in order, ignoring origins) behave like a tuple of pairs.
    """

    objectives: tuple[str, ...]
    pairs: tuple[PreferencePair, ...] = ()

    def __post_init__(self):
        objectives = _objective_names(self.objectives, "objectives")
        pairs = tuple(self.pairs)
        for i, pair in enumerate(pairs):
            if not isinstance(pair, PreferencePair):
                raise TypeError(f"pairs[{i}]: expected a PreferencePair, got {_describe(pair)}")
            if len(pair.labels) != len(objectives):
                raise ValueError(
                    f"pairs[{i}] ({pair.origin or 'no origin'}): {len(pair.labels)} label(s), expected "
                    f"K = {len(objectives)} (one per objective: {', '.join(objectives)})"
                )
        object.__setattr__(self, "objectives", objectives)
        object.__setattr__(self, "pairs", pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self):
        return iter(self.pairs)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return PreferenceDataset(self.objectives, self.pairs[index])
        return self.pairs[index]

    @property
    def n_objectives(self) -> int:
        """K, the number of objectives."""
        return len(self.objectives)

    def prompts(self) -> list[str]:
        """The distinct prompts, in first-seen order."""
        return list(dict.fromkeys(pair.prompt for pair in self.pairs))

    def duplicates(self) -> list[tuple[int, int]]:
        """``(first index, duplicate index)`` for each pair repeating an earlier one.

        Two pairs are the same when they have the same prompt and the same two responses,
        in either order (a/b swapped counts); labels are not compared.
        """
        first: dict[tuple[str, frozenset[str]], int] = {}
        found = []
        for i, pair in enumerate(self.pairs):
            key = (pair.prompt, frozenset((pair.response_a, pair.response_b)))
            if key in first:
                found.append((first[key], i))
            else:
                first[key] = i
        return found

    def label_conflicts(self) -> list[tuple[int, int]]:
        """The :meth:`duplicates` ``(first index, duplicate index)`` whose labels contradict:
        on some objective the duplicate's label, read in the first pair's a/b order (``1 - l``
        when a and b are swapped), differs from the first pair's label."""
        conflicts = []
        for i, j in self.duplicates():
            first, repeat = self.pairs[i], self.pairs[j]
            swapped = repeat.response_a != first.response_a
            aligned = [1.0 - label if swapped else label for label in repeat.labels]
            if any(abs(a - b) > LABEL_ATOL for a, b in zip(first.labels, aligned, strict=True)):
                conflicts.append((i, j))
        return conflicts

    def report(self) -> dict:
        """A summary for logs and the app.

        Keys: ``n_pairs``, ``n_prompts``, ``K``, ``objectives`` (list), ``primary``,
        ``single_objective`` (K = 1), ``label_kind`` (per objective: ``"hard"`` when every
        label is 0 or 1, else ``"soft"``), ``n_ties`` (per objective: labels equal to 0.5),
        ``n_duplicates`` (see :meth:`duplicates`), ``n_label_conflicts`` (the duplicates whose
        labels contradict the pair they repeat, see :meth:`label_conflicts`) and ``notes``
        (list of plain sentences).
        """
        labels = np.array([pair.labels for pair in self.pairs], dtype=float).reshape(len(self), self.n_objectives)
        hard = np.all((labels == 0.0) | (labels == 1.0), axis=0)
        ties = np.sum(labels == TIE, axis=0)
        single = self.n_objectives == 1
        conflicts = self.label_conflicts()
        notes = []
        if single:
            notes.append(
                f"single objective (K = 1: {self.objectives[0]}): usable by single-objective trainers "
                "(SFT, DPO, IPO); MOPO needs a primary and at least one secondary objective"
            )
        if conflicts:
            shown = ", ".join(f"{self.origin_of(j)} contradicts {self.origin_of(i)}"
                              for i, j in conflicts[:MAX_LISTED_ERRORS])
            notes.append(f"{len(conflicts)} label conflict(s): the same pair again with other labels ({shown}"
                         f"{', ...' if len(conflicts) > MAX_LISTED_ERRORS else ''})")
        return {
            "n_pairs": len(self),
            "n_prompts": len(self.prompts()),
            "K": self.n_objectives,
            "objectives": list(self.objectives),
            "primary": self.objectives[0],
            "single_objective": single,
            "label_kind": {name: "hard" if h else "soft" for name, h in zip(self.objectives, hard, strict=True)},
            "n_ties": {name: int(t) for name, t in zip(self.objectives, ties, strict=True)},
            "n_duplicates": len(self.duplicates()),
            "n_label_conflicts": len(conflicts),
            "notes": notes,
        }

    def origin_of(self, index: int) -> str:
        """Pair ``index``'s origin, or ``"pairs[<index>]"`` when it has none."""
        return self.pairs[index].origin or f"pairs[{index}]"

    def split(self, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> tuple[PreferenceDataset, ...]:
        """Split by prompt into ``len(fractions)`` datasets (e.g. train/validation/test).

        All pairs of a prompt land in the same split, every pair in exactly one, in its
        original relative order. Prompts are shuffled with ``seed`` (same seed, same
        split); the split sizes follow ``fractions`` (non-negative, summing to 1) in pairs,
        as closely as whole prompts allow: a prompt goes to the split whose share of the
        shuffled pair sequence contains the middle of its pairs.
        """
        shares = _check_fractions(fractions)
        rng = np.random.default_rng(check_int(seed, "seed", 0))
        groups = list(self._indices_by_prompt().values())
        order = rng.permutation(len(groups))
        sizes = np.array([len(groups[g]) for g in order], dtype=float)
        middles = np.cumsum(sizes) - sizes / 2
        bounds = np.minimum(np.cumsum(shares) * len(self), len(self))
        bounds[-1] = len(self)  # the last split takes the rest, whatever the rounding
        part_of = np.searchsorted(bounds, middles, side="right")
        members: list[list[int]] = [[] for _ in shares]
        for g, part in zip(order, part_of, strict=True):
            members[part].extend(groups[g])
        return tuple(PreferenceDataset(self.objectives, tuple(self.pairs[i] for i in sorted(m))) for m in members)

    def _indices_by_prompt(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for i, pair in enumerate(self.pairs):
            groups.setdefault(pair.prompt, []).append(i)
        return groups

    def select(self, objectives) -> PreferenceDataset:
        """The dataset restricted to ``objectives`` (names, any subset, in the order given).

        The first name becomes the primary objective. Unknown names raise ``ValueError``.
        """
        names = _objective_names(objectives, "objectives")
        unknown = [name for name in names if name not in self.objectives]
        if unknown:
            raise ValueError(
                f"objectives: unknown objective {unknown[0]!r} (the dataset has: {', '.join(self.objectives)})"
            )
        columns = [self.objectives.index(name) for name in names]
        pairs = tuple(replace(pair, labels=tuple(pair.labels[c] for c in columns)) for pair in self.pairs)
        return PreferenceDataset(names, pairs)

    def to_records(self) -> list[dict]:
        """The pairs as records ``{"prompt", "response_a", "response_b", "labels": {name: label}}``."""
        return [
            {
                "prompt": pair.prompt,
                "response_a": pair.response_a,
                "response_b": pair.response_b,
                "labels": dict(zip(self.objectives, pair.labels, strict=True)),
            }
            for pair in self.pairs
        ]

    @classmethod
    def from_records(cls, records: Iterable, objectives=None, origin: str = "records") -> PreferenceDataset:
        """Build a dataset from records in the file format (see the module docstring).

        ``objectives`` fixes the names and their order (required for list labels); without
        it they come from the first record's ``labels`` mapping. ``origin`` names the source
        in error messages and in each pair's ``origin`` (``"<origin>:row <n>"``, 1-based).
        """
        return _build_dataset(list(enumerate(records, start=1)), [], objectives, origin, origin)


def _check_fractions(fractions) -> np.ndarray:
    """Split fractions: a non-empty 1-D vector of non-negative numbers summing to 1."""
    shares = as_finite_array(fractions, "fractions")
    if shares.ndim != 1 or shares.size == 0:
        raise ValueError(f"fractions: expected a non-empty sequence of numbers, got shape {shares.shape}")
    if (shares < 0).any():
        raise ValueError(f"fractions: must be >= 0, got {shares.tolist()}")
    if abs(shares.sum() - 1.0) > ATOL:
        raise ValueError(f"fractions: must sum to 1, got {shares.tolist()} (sum {shares.sum():.10g})")
    return shares


# --------------------------------------------------------------------------- records -> dataset


def _build_dataset(
    rows: list[tuple[int, object]], errors: list[tuple[int, str]], objectives, source: str, header: str
) -> PreferenceDataset:
    """Parse numbered records into a dataset, or raise one ``ValueError`` for all bad rows.

    ``rows`` are ``(1-based row, record)``; ``errors`` are ``(row, message)`` found while
    reading (e.g. invalid JSON). ``source`` prefixes each row message, ``header`` the whole.
    """
    if not rows and not errors:
        raise ValueError(f"{header}: empty (no rows)")
    errors = list(errors)
    names, reference = _reference_objectives(rows, objectives, source)
    pairs = []
    for row, record in rows:
        pair, problems = _parse_record(record, names, reference, objectives is not None, f"{source}:row {row}")
        errors.extend((row, problem) for problem in problems)
        if pair is not None:
            pairs.append(pair)
    if errors:
        _raise_row_errors(errors, source, header)
    return PreferenceDataset(names, tuple(pairs))


def _reference_objectives(rows, objectives, source: str) -> tuple[tuple[str, ...] | None, str]:
    """The objective names every row must have, and how to describe where they came from.

    Explicit ``objectives`` win; otherwise the first row whose labels are a mapping sets
    them. ``None`` when neither exists (every row then reports its own labels error).
    """
    if objectives is not None:
        return _objective_names(objectives, "objectives"), "expected objectives"
    for row, record in rows:
        if isinstance(record, Mapping) and isinstance(record.get("labels"), Mapping):
            names = _objective_names(record["labels"].keys(), f"{source}: row {row}: field 'labels'")
            return names, f"row {row} has"
    return None, ""


def _parse_record(
    record, names, reference: str, list_allowed: bool, origin: str
) -> tuple[PreferencePair | None, list[str]]:
    """One record to a pair; returns ``(pair or None, problems)``."""
    if not isinstance(record, Mapping):
        return None, [f"expected an object with keys {', '.join(FIELDS)}, got {_describe(record)}"]
    problems = [f"field '{key}': missing" for key in FIELDS if key not in record]
    problems += [f"field '{key}': unexpected (allowed: {', '.join(FIELDS)})" for key in record if key not in FIELDS]
    problems += _text_problems({key: record[key] for key in FIELDS[:3] if key in record})
    labels, label_problems = _parse_labels(record.get("labels"), names, reference, list_allowed)
    if "labels" in record:
        problems += label_problems
    if problems:
        return None, problems
    return PreferencePair(record["prompt"], record["response_a"], record["response_b"], labels, origin), []


def _parse_labels(value, names, reference: str, list_allowed: bool) -> tuple[tuple, list[str]]:
    """Labels (a mapping by name, or a list when names were given) in ``names`` order."""
    if isinstance(value, Mapping):
        return _labels_from_mapping(value, names, reference)
    if isinstance(value, (list, tuple, np.ndarray)):
        if not list_allowed:
            why = 'a list of labels needs objectives=[...] to name them (or write labels as {"<objective>": label})'
            return (), [f"field 'labels': {why}"]
        return _labels_from_list(value, names)
    why = f"expected a mapping {{objective: label}} (or a list with objectives=...), got {_describe(value)}"
    return (), [f"field 'labels': {why}"]


def _labels_from_mapping(value: Mapping, names, reference: str) -> tuple[tuple, list[str]]:
    expected = f"({reference}: {', '.join(names)})"
    problems = [f"field 'labels': objective {name!r} missing {expected}" for name in names if name not in value]
    problems += [f"field 'labels': unexpected objective {key!r} {expected}" for key in value if key not in names]
    problems += [f"field 'labels.{name}': {why}" for name in names if name in value
                 if (why := _label_problem(value[name]))]
    return tuple(value.get(name) for name in names), problems


def _labels_from_list(value, names) -> tuple[tuple, list[str]]:
    if len(value) != len(names):
        why = f"expected {len(names)} label(s), one per objective ({', '.join(names)}), got {len(value)}"
        return (), [f"field 'labels': {why}"]
    named = zip(names, value, strict=True)
    problems = [f"field 'labels.{name}': {why}" for name, v in named if (why := _label_problem(v))]
    return tuple(value), problems


def _raise_row_errors(errors: list[tuple[int, str]], source: str, header: str) -> None:
    """One ``ValueError`` listing the first :data:`MAX_LISTED_ERRORS` row errors and the totals."""
    errors = sorted(errors, key=lambda e: e[0])  # stable: a row's errors keep their order
    n_rows = len({row for row, _ in errors})
    shown = errors[:MAX_LISTED_ERRORS]
    lines = [f"  {source}: row {row}: {message}" for row, message in shown]
    if len(errors) > len(shown):
        lines.append(f"  ... and {len(errors) - len(shown)} more (first {len(shown)} of {len(errors)} shown)")
    raise ValueError(f"{header}: {len(errors)} error(s) in {n_rows} row(s):\n" + "\n".join(lines))


# --------------------------------------------------------------------------- files


def load_preferences(path, objectives=None, strict_duplicates: bool = False) -> PreferenceDataset:
    """Load a ``.jsonl`` or ``.parquet`` preference file (format in the module docstring).

    Rows are numbered from 1 (JSONL: line numbers; blank lines carry no record). Each
    pair's ``origin`` is ``"<file name>:row <n>"``. ``objectives`` fixes the objective
    order (and allows list labels). Duplicate pairs are kept and counted by
    :meth:`PreferenceDataset.report`; ``strict_duplicates=True`` makes them an error.
    """
    path = Path(path)
    suffix = _suffix(path)
    rows, errors = _read_jsonl(path) if suffix == ".jsonl" else _read_parquet(path)
    dataset = _build_dataset(rows, errors, objectives, path.name, str(path))
    if strict_duplicates:
        _reject_duplicates(dataset, path)
    return dataset


def save_preferences(dataset: PreferenceDataset, path) -> None:
    """Write ``dataset`` as ``.jsonl`` (UTF-8, one record a line) or ``.parquet``.

    :func:`load_preferences` gives back an equal dataset: same objective order, texts and
    labels bit for bit. An empty dataset is refused (an empty file cannot be loaded).
    """
    path = Path(path)
    suffix = _suffix(path)
    if len(dataset) == 0:
        raise ValueError(f"{path}: nothing to save (the dataset has no pairs)")
    if suffix == ".jsonl":
        _write_jsonl(dataset, path)
    else:
        _write_parquet(dataset, path)


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unknown file suffix {path.suffix!r} (expected one of {', '.join(SUFFIXES)})")
    return suffix


def _read_jsonl(path: Path) -> tuple[list[tuple[int, object]], list[tuple[int, str]]]:
    """``(rows, errors)`` of the JSON Lines file at ``path`` (see :func:`parse_json_lines`)."""
    with path.open("rb") as handle:
        return parse_json_lines(numbered_lines(iter(lambda: handle.read(READ_CHUNK_BYTES), b"")))


def numbered_lines(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """``(1-based line number, line)`` for the lines of the byte stream ``chunks`` that are not
    blank, split on ``\\n`` only (so U+2028 and similar inside strings are safe). A chunk of
    ASCII whitespace only is counted without being split, so a file of millions of empty
    lines costs neither time nor memory."""
    line_number, pending = 1, b""
    for chunk in chunks:
        if not pending and not chunk.strip():
            line_number += chunk.count(b"\n")
            continue
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for offset, line in enumerate(lines):
            if line.strip():
                yield line_number + offset, line
        line_number += len(lines)
    if pending.strip():
        yield line_number, pending


def parse_json_lines(lines: Iterable[tuple[int, bytes]]) -> tuple[list[tuple[int, object]], list[tuple[int, str]]]:
    """``(rows, errors)``: parsed records by 1-based line number, and lines that are not valid JSON.

    ``lines`` are ``(line number, raw bytes)`` as :func:`numbered_lines` gives them; a UTF-8
    byte-order mark on line 1 is allowed; lines blank after decoding are skipped; duplicate
    keys and nesting too deep to parse are errors.
    """
    rows, errors = [], []
    for row, raw in lines:
        try:
            line = raw.decode("utf-8-sig" if row == 1 else "utf-8")
            if line.strip():
                rows.append((row, json.loads(line, object_pairs_hook=_unique_keys)))
        except UnicodeDecodeError as exc:
            errors.append((row, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"))
        except RecursionError:
            errors.append((row, "invalid JSON (nested too deeply to read)"))
        except ValueError as exc:
            errors.append((row, f"invalid JSON ({exc})"))
    return rows, errors


def _unique_keys(items: list[tuple[str, object]]) -> dict:
    """``json`` object hook: a repeated key is an error rather than last-one-wins."""
    result = {}
    for key, value in items:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _read_parquet(path: Path) -> tuple[list[tuple[int, object]], list[tuple[int, str]]]:
    """``(rows, [])``: the table's rows as records numbered from 1 (labels: struct or list column)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"{path}: cannot read as Parquet ({exc})") from None
    return list(enumerate(table.to_pylist(), start=1)), []


def _write_jsonl(dataset: PreferenceDataset, path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for record in dataset.to_records():
            handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")


def _write_parquet(dataset: PreferenceDataset, path: Path) -> None:
    """Texts as string columns, labels as a struct column with one float64 field per objective."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels_type = pa.struct([(name, pa.float64()) for name in dataset.objectives])
    schema = pa.schema([(name, pa.string()) for name in FIELDS[:3]] + [("labels", labels_type)])
    pq.write_table(pa.Table.from_pylist(dataset.to_records(), schema=schema), path)


def _reject_duplicates(dataset: PreferenceDataset, path: Path) -> None:
    duplicates = dataset.duplicates()
    if not duplicates:
        return
    lines = [f"  {dataset[j].origin} repeats {dataset[i].origin}" for i, j in duplicates[:MAX_LISTED_ERRORS]]
    if len(duplicates) > len(lines):
        lines.append(f"  ... and {len(duplicates) - len(lines)} more")
    raise ValueError(
        f"{path}: {len(duplicates)} duplicate pair(s) (same prompt and responses, a/b order ignored; "
        "strict_duplicates=True):\n" + "\n".join(lines)
    )
