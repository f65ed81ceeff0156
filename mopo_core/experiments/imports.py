"""Your own results in: evaluated points from a CSV or JSON file, recorded in the run store as
runs of kind :data:`IMPORT_KIND`, so that runs trained elsewhere get the Compare page's fronts,
dominance, hypervolume and attainment views beside the runs recorded here.

File format (every objective is maximised; at least two objectives; UTF-8):

- CSV (``.csv``), one point per row; header columns:

  - ``method`` (required): the point's method, its label on the Compare page (not empty);
  - ``value.<objective>`` (at least two): the point's value of that objective, a finite number;
    the objectives are named and ordered by these columns;
  - ``se.<objective>`` (optional, for objectives that have a ``value.`` column): the value's
    standard error, a finite number ``>= 0`` (an empty cell: none, stored as null);
  - ``param.<name>`` (optional): a parameter of the point (a number when the cell reads as one,
    else text; an empty cell leaves the parameter out of that point);
  - ``run`` and ``seed`` (optional): which run the point came from (text) and its seed (an
    integer ``>= 0``); an empty cell means none.

  For example::

      method,run,seed,param.beta,value.helpfulness,value.harmlessness,se.helpfulness,se.harmlessness
      dpo,my-sweep,0,0.1,0.61,0.48,0.01,0.012

- JSON (``.json``): ``{"objectives": [names], "points": [point, ...]}``, each point
  ``{"method": str, "values": [K numbers], "params": {...}, "stderr": [K numbers >= 0],
  "run": str, "seed": int}``, where ``params``, ``stderr``, ``run`` and ``seed`` are optional.

Recording (:func:`record_points`): one run per distinct ``(run, seed)`` pair (a file without
either gives one run), in the order they first appear, status ``finished``; its config holds
``objectives``, ``source_file`` (the file's resolved path, or the upload's name) and the
``run`` and ``seed`` the file gave, so runs that differ only by seed form one attainment group.
Each point: label = method, params, values, and ``extra = {"stderr": [...]}`` when the file
gives standard errors. The run's name is ``NAME · run · seed N`` (``NAME``: the ``name``
argument, else the file's stem).

Checks: a file is refused whole, before anything is recorded, at its first problem, with a
``ValueError`` naming the file, the row (CSV: 1-based data row; the header is ``header``) or
point (JSON: ``points[i]``, 0-based) and the column or field. Nothing in a file is executed;
paths are resolved before use; files over :data:`MAX_IMPORT_BYTES` are refused unread.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from mopo_core.runs import RunStore, to_jsonable
from mopo_core.validation import _load_json, check_int, check_nonnegative, format_bytes

#: The kind of the runs recorded from a file.
IMPORT_KIND = "imported"
#: The largest file accepted: 50 MiB.
MAX_IMPORT_BYTES = 50 * 2**20
#: CSV columns with a fixed name; the others are ``param.``, ``value.`` or ``se.`` + a name.
_FIXED_COLUMNS = ("method", "run", "seed")
_PREFIXES = ("param.", "value.", "se.")
_JSON_POINT_KEYS = ("method", "values", "params", "stderr", "run", "seed")


def _resolve(path) -> Path:
    return Path(path).expanduser().resolve()


def _check_size(name: str, size: int) -> None:
    if size > MAX_IMPORT_BYTES:
        raise ValueError(f"{name}: {format_bytes(size)}, over the {format_bytes(MAX_IMPORT_BYTES)} limit for "
                         "an imported points file")


def read_points(path) -> tuple[list[str], list[dict]]:
    """The objectives and points of the file at ``path`` (resolved first; its size checked
    before it is read): :func:`parse_points`."""
    path = _resolve(path)
    try:
        with open(path, "rb") as handle:
            _check_size(str(path), os.fstat(handle.fileno()).st_size)
            data = handle.read()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    return parse_points(str(path), data)


def parse_points(name: str, data: bytes) -> tuple[list[str], list[dict]]:
    """``(objectives, points)`` from the bytes of a ``.csv`` or ``.json`` file named ``name``
    (the format in the module doc). Each point: ``method`` (str), ``params`` (dict),
    ``values`` (K floats), ``stderr`` (K floats or None), ``run`` (str or None), ``seed``
    (int or None). ``ValueError`` naming ``name``, the row or point and the column or field."""
    _check_size(name, len(data))
    suffix = Path(name).suffix.lower()
    if suffix == ".csv":
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{name}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        objectives, points = _parse_csv(name, text)
    elif suffix == ".json":
        objectives, points = _parse_json(name, _load_json(name, data))
    else:
        raise ValueError(f"{name}: expected a .csv or .json file of evaluated points")
    if not points:
        raise ValueError(f"{name}: no points (the file has no data rows)")
    return objectives, points


def _objective_names(names: list, where: str) -> list[str]:
    """At least two distinct, non-empty objective names."""
    if len(names) < 2:
        raise ValueError(f"{where}: need at least 2 objectives, got {len(names)} ({', '.join(map(str, names))})")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: an objective name must be non-empty text, got {name!r}")
    if len(set(names)) < len(names):
        raise ValueError(f"{where}: objective names repeat ({', '.join(names)})")
    return list(names)


def _number(value, where: str) -> float:
    """A finite float from a CSV cell (text) or a number; ``ValueError`` naming ``where``."""
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"{where}: missing value")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{where}: not a number: {value!r}")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise ValueError(f"{where}: not a number: {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{where}: not a finite number: {value!r}")
    return number


def _method(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: the method must be non-empty text, got {value!r}")
    return value.strip()


# --------------------------------------------------------------------------- CSV


def _csv_header(name: str, header: list[str]) -> tuple[list[str], list[str]]:
    """``(columns, objectives)`` of a CSV header, every column known and the objectives valid."""
    columns = [c.strip() for c in header]
    for column in columns:
        where = f"{name}: header, column {column}"
        if columns.count(column) > 1:
            raise ValueError(f"{where}: appears more than once")
        prefix = next((p for p in _PREFIXES if column.startswith(p)), None)
        if column not in _FIXED_COLUMNS and (prefix is None or not column[len(prefix):].strip()):
            raise ValueError(f"{where}: unknown column; expected method, run, seed, param.<name>, "
                             "value.<objective> or se.<objective>")
    if "method" not in columns:
        raise ValueError(f"{name}: header: no column 'method'")
    objectives = _objective_names([c[len("value."):] for c in columns if c.startswith("value.")],
                                  f"{name}: header (value.<objective> columns)")
    for column in columns:
        if column.startswith("se.") and column[len("se."):] not in objectives:
            raise ValueError(f"{name}: header, column {column}: no matching value.{column[len('se.'):]} column")
    return columns, objectives


def _param(text: str, where: str):
    """A parameter cell: an int, else a finite float, else the text."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return _number(number, where)


def _stderr_cell(text: str, where: str) -> float:
    """A standard-error cell: a finite number >= 0, or NaN (none) when empty."""
    return check_nonnegative(_number(text, where), where) if text else math.nan


def _seed(text: str, where: str) -> int | None:
    """A seed cell: an integer >= 0, or None when empty."""
    if not text:
        return None
    try:
        return check_int(int(text), where, 0)
    except ValueError as exc:
        raise ValueError(f"{where}: must be an integer >= 0, got {text!r}") from exc


def _parse_csv(name: str, text: str) -> tuple[list[str], list[dict]]:
    rows = [r for r in csv.reader(io.StringIO(text, newline="")) if any(cell.strip() for cell in r)]
    if not rows:
        raise ValueError(f"{name}: empty file; expected a header row (method, value.<objective>, ...)")
    columns, objectives = _csv_header(name, rows[0])
    has_se = any(c.startswith("se.") for c in columns)
    points = []
    for i, cells in enumerate(rows[1:], start=1):
        if len(cells) > len(columns):
            raise ValueError(f"{name}: row {i}: {len(cells)} cells, more than the header's {len(columns)} columns")
        row = dict(zip(columns, [c.strip() for c in cells] + [""] * (len(columns) - len(cells))))
        where = lambda column: f"{name}: row {i}, column {column}"  # noqa: E731
        stderr = [_stderr_cell(row.get(f"se.{o}", ""), where(f"se.{o}")) for o in objectives] if has_se else None
        points.append({
            "method": _method(row["method"], where("method")),
            "params": {c[len("param."):]: _param(v, where(c)) for c, v in row.items() if c.startswith("param.") and v},
            "values": [_number(row[f"value.{o}"], where(f"value.{o}")) for o in objectives],
            "stderr": stderr,
            "run": row.get("run") or None,
            "seed": _seed(row.get("seed", ""), where("seed")),
        })
    return objectives, points


# --------------------------------------------------------------------------- JSON


def _parse_json(name: str, doc) -> tuple[list[str], list[dict]]:
    if not isinstance(doc, dict) or set(doc) != {"objectives", "points"}:
        keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{name}: expected an object with exactly the keys 'objectives' and 'points', got {keys}")
    if not isinstance(doc["objectives"], list):
        raise ValueError(f"{name}: field objectives: expected a list of names")
    objectives = _objective_names(doc["objectives"], f"{name}: field objectives")
    if not isinstance(doc["points"], list):
        raise ValueError(f"{name}: field points: expected a list of points")
    return objectives, [_json_point(name, i, p, objectives) for i, p in enumerate(doc["points"])]


def _json_list(point: dict, key: str, where: str, objectives: list[str]) -> list[float]:
    """``point[key]``: K finite numbers (K = the number of objectives)."""
    values = point[key]
    if not isinstance(values, list) or len(values) != len(objectives):
        got = f"{len(values)} entries" if isinstance(values, list) else type(values).__name__
        raise ValueError(f"{where}, field {key}: expected a list of {len(objectives)} numbers (one per objective: "
                         f"{', '.join(objectives)}), got {got}")
    return [_json_number(v, f"{where}, field {key}[{j}]") for j, v in enumerate(values)]


def _json_number(value, where: str) -> float:
    """A JSON number (never text), finite."""
    if isinstance(value, str):
        raise ValueError(f"{where}: not a number: {value!r}")
    return _number(value, where)


def _json_point(name: str, i: int, point, objectives: list[str]) -> dict:
    where = f"{name}: points[{i}]"
    if not isinstance(point, dict):
        raise ValueError(f"{where}: expected an object, got {type(point).__name__}")
    for key in point:
        if key not in _JSON_POINT_KEYS:
            raise ValueError(f"{where}, field {key}: unknown field; expected {', '.join(_JSON_POINT_KEYS)}")
    for key in ("method", "values"):
        if key not in point:
            raise ValueError(f"{where}, field {key}: missing")
    params = point.get("params", {})
    if not isinstance(params, dict):
        raise ValueError(f"{where}, field params: expected an object, got {type(params).__name__}")
    try:
        params = to_jsonable(params, "params")
    except ValueError as exc:
        raise ValueError(f"{where}, field {exc}") from None
    stderr = None
    if point.get("stderr") is not None:
        stderr = [check_nonnegative(se, f"{where}, field stderr[{j}]")
                  for j, se in enumerate(_json_list(point, "stderr", where, objectives))]
    run = point.get("run")
    if run is not None and not isinstance(run, str):
        raise ValueError(f"{where}, field run: expected text, got {run!r}")
    seed = point.get("seed")
    return {"method": _method(point["method"], f"{where}, field method"), "params": params,
            "values": _json_list(point, "values", where, objectives), "stderr": stderr, "run": run or None,
            "seed": None if seed is None else check_int(seed, f"{where}, field seed", 0)}


# --------------------------------------------------------------------------- recording


def record_points(store: RunStore, objectives: list[str], points: list[dict], source: str,
                  name: str | None = None) -> list[int]:
    """Record ``points`` (from :func:`parse_points`) as finished runs of kind
    :data:`IMPORT_KIND`, one per distinct ``(run, seed)``; return their ids (see the module doc)."""
    base = name or Path(source).stem
    groups: dict[tuple, list[dict]] = {}
    for point in points:
        groups.setdefault((point["run"], point["seed"]), []).append(point)
    ids = []
    for (run, seed), group in groups.items():
        config = {"objectives": list(objectives), "source_file": source,
                  **({"run": run} if run is not None else {}), **({"seed": seed} if seed is not None else {})}
        title = " · ".join([base, *([run] if run is not None else []), *([f"seed {seed}"] if seed is not None else [])])
        with store.record(IMPORT_KIND, config, name=title) as run_id:
            store.add_points(run_id, [{"label": p["method"], "params": p["params"], "values": p["values"],
                                       **({"extra": {"stderr": p["stderr"]}} if p["stderr"] is not None else {})}
                                      for p in group])
        ids.append(run_id)
    return ids


def import_points(store: RunStore, path, name: str | None = None) -> list[int]:
    """Read the file at ``path`` (:func:`read_points`) and record its points
    (:func:`record_points`, ``source_file`` = the resolved path); return the new runs' ids."""
    objectives, points = read_points(path)
    return record_points(store, objectives, points, str(_resolve(path)), name=name)
