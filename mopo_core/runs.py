"""The run store: every solve, sweep, suite and training run, in one SQLite file.

The file's location is one setting: the environment variable ``MOPO_STORE`` if set, else
``<platformdirs user data dir for "mopo-studio">/runs.sqlite`` (:func:`default_store_path`).

Tables (schema version :data:`SCHEMA_VERSION`, kept in ``PRAGMA user_version``):

- ``runs``: ``id``, ``kind`` ("solve", "sweep", "suite", "train", ...), ``name``, ``config``
  (JSON), ``status`` (one of :data:`STATUSES`), ``error``, and ISO-8601 UTC timestamps
  ``created_at``, ``started_at``, ``finished_at``.
- ``metrics``: ``run_id``, ``step``, ``name``, ``value`` (a series per name; NaN is NULL).
- ``points``: ``run_id``, ``idx``, ``label`` (e.g. the method), ``params`` (JSON, e.g.
  ``{"threshold": [0.6]}``), ``objective_values`` (JSON list of K floats, maximised),
  ``extra`` (JSON, e.g. the policy, multipliers, a feasible flag).
- ``run_marks``: ``run_id``, ``tags`` (JSON list of texts), ``hidden`` (0/1): what the user
  marked a run with (:meth:`RunStore.set_tags`, :meth:`RunStore.set_hidden`; a run without a row
  has no tags and is shown). Created by ``CREATE TABLE IF NOT EXISTS`` on opening, so stores
  written before it existed read as before and gain it (the schema version is unchanged).
- ``run_owners``: ``run_id``, ``pid``, ``pid_start``, ``claimed_at``: the process training the
  run (see "run owners" at the end: :func:`claim_run`, :func:`release_run`,
  :func:`check_run_owner`); created on first use.

The database runs in WAL mode and every operation opens its own connection, so several
threads or processes (the app and a worker) can share one file. JSON columns accept numpy
scalars and arrays; NaN is stored as null. Infinite values in JSON columns are rejected
(JSON has no infinity), naming the field. A path that is a folder, a file that is not an
SQLite database (text, garbage, truncated or corrupt) or a store with a newer schema raises
:class:`StoreError`, a ``ValueError`` whose message names the file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import platformdirs

from mopo_core.processes import alive, process_start

#: Environment variable that sets the store's path.
STORE_ENV = "MOPO_STORE"
#: Version of the schema below, stored as ``PRAGMA user_version``.
SCHEMA_VERSION = 1
STATUSES = ("queued", "running", "finished", "failed", "cancelled", "interrupted", "diverged")
#: Statuses that end a run (they set ``finished_at``). ``diverged``: a training run stopped
#: because its loss, gradient norm or KL went wrong (the rule and the step are in
#: :mod:`mopo_core.training.divergence`; the run's ``error`` says which step and why).
TERMINAL_STATUSES = frozenset({"finished", "failed", "cancelled", "interrupted", "diverged"})

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN {STATUSES!r}),
    error TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL
);
CREATE INDEX IF NOT EXISTS metrics_by_run ON metrics (run_id, name, step);
CREATE TABLE IF NOT EXISTS points (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    label TEXT NOT NULL,
    params TEXT NOT NULL,
    objective_values TEXT NOT NULL,
    extra TEXT,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS run_marks (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
    tags TEXT NOT NULL DEFAULT '[]',
    hidden INTEGER NOT NULL DEFAULT 0
);
"""

#: The first 16 bytes of every SQLite database file.
SQLITE_HEADER = b"SQLite format 3\x00"
#: SQLite primary result codes that mean the file itself is unusable (not busy or locked).
_UNREADABLE_FILE_ERRORS = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_CANTOPEN", "SQLITE_IOERR"})

_RUN_COLUMNS = ("id", "kind", "name", "config", "status", "error", "created_at", "started_at", "finished_at")
_POINT_KEYS = ("label", "params", "values")


def default_store_path() -> Path:
    """The store's path: ``$MOPO_STORE`` if set, else the user data dir's ``runs.sqlite``."""
    setting = os.environ.get(STORE_ENV)
    if setting:
        return Path(setting).expanduser()
    return Path(platformdirs.user_data_dir("mopo-studio")) / "runs.sqlite"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def to_jsonable(value: Any, name: str = "value") -> Any:
    """Convert ``value`` to plain JSON types: numpy scalars/arrays become Python numbers and
    lists, tuples become lists, dataclasses dicts, paths strings, NaN ``None``.

    Raises ``ValueError`` for infinite numbers and ``TypeError`` for other objects, naming
    the offending field (``name`` plus the keys/indices leading to it).
    """
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, f"{name}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v, f"{name}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            raise ValueError(f"{name}: infinite value {value} cannot be stored as JSON")
        return value
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{name}: cannot store a {type(value).__name__} as JSON")


def _dumps(value: Any, name: str) -> str:
    return json.dumps(to_jsonable(value, name), allow_nan=False)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _float_or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def parse_tags(tags) -> list[str]:
    """Tags from one comma-separated text or a list of texts: each stripped, empty ones and
    repeats dropped, order kept. ``ValueError`` naming ``tags`` for anything else."""
    if isinstance(tags, list | tuple) and all(isinstance(t, str) for t in tags):
        tags = ",".join(tags)
    if not isinstance(tags, str):
        raise ValueError(f"tags: expected a comma-separated text or a list of texts, got {tags!r}")
    return list(dict.fromkeys(t.strip() for t in tags.split(",") if t.strip()))


class StoreError(ValueError):
    """The run store's file cannot be used: a folder, not an SQLite file, corrupt or
    unreadable, or written by a newer schema. The message names the file."""


@dataclasses.dataclass(eq=False)
class Run:
    """One stored run.

    ``metrics``: DataFrame (step, name, value). ``points``: DataFrame (idx, label, params,
    values, extra) plus the values expanded as columns ``v0..v{K-1}`` (NaN where null).
    Timestamps are ISO-8601 UTC strings (``None`` until set).
    """

    id: int
    kind: str
    name: str | None
    config: dict
    status: str
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    metrics: pd.DataFrame
    points: pd.DataFrame


def _lists_every_status(conn: sqlite3.Connection) -> bool:
    """Whether the store's ``runs`` table accepts every status of :data:`STATUSES` (its CHECK)."""
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone()
    return all(repr(status) in sql for status in STATUSES)


class RunStore:
    """Runs, metric series and result points in one SQLite file (see the module doc).

    ``path``: the database file; ``None`` uses :func:`default_store_path`. Parent
    directories are created. Unknown run ids raise ``KeyError`` naming the id; a path that
    is not a usable run store raises :class:`StoreError` (a ``ValueError``) naming it.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create the run store's folder ({exc})") from None
        self._check_file()
        self._init_schema()

    # ------------------------------------------------------------------ connection

    def _check_file(self) -> None:
        """:class:`StoreError` unless the path is missing, empty or starts with the SQLite header."""
        if self.path.is_dir():
            raise StoreError(f"{self.path} is not a readable SQLite run store: it is a folder")
        try:
            with self.path.open("rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"{self.path} is not a readable SQLite run store: {exc}") from None
        if header and header != SQLITE_HEADER:
            raise StoreError(f"{self.path} is not a readable SQLite run store: it does not start with the SQLite "
                             "header (a text or other file)")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection with foreign keys on, committed (or rolled back) and closed.

        A file SQLite cannot open or finds corrupt raises :class:`StoreError` naming it."""
        try:
            conn = sqlite3.connect(self.path, timeout=30.0)
            try:
                conn.execute("PRAGMA foreign_keys = ON")
                with conn:
                    yield conn
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            primary_code = "_".join((exc.sqlite_errorname or "").split("_")[:2])  # SQLITE_IOERR_READ -> SQLITE_IOERR
            if primary_code not in _UNREADABLE_FILE_ERRORS:
                raise
            raise StoreError(f"{self.path} is not a readable SQLite run store: {exc}") from None

    def _init_schema(self) -> None:
        with self._connect() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"run store {self.path}: schema version {version} is newer than this "
                    f"code's ({SCHEMA_VERSION}); upgrade mopo-studio"
                )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._widen_statuses()

    def _widen_statuses(self) -> None:
        """Rebuild a ``runs`` table written before the newest status existed (its CHECK lists
        fewer statuses; SQLite cannot change a CHECK in place), keeping every row, and every
        metric and point (foreign keys are off during the rebuild, so nothing cascades). The
        schema version is unchanged: the old statuses stay valid."""
        with self._connect() as conn:
            if _lists_every_status(conn):
                return
        with transaction(self.path, immediate=True, foreign_keys=False) as conn:
            if not _lists_every_status(conn):  # another process may have just done it
                table = _SCHEMA.split("CREATE TABLE IF NOT EXISTS runs", 1)[1].split(";", 1)[0]
                conn.execute(f"CREATE TABLE runs_widened {table}")
                conn.execute(f"INSERT INTO runs_widened ({', '.join(_RUN_COLUMNS)}) "
                             f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs")
                conn.execute("DROP TABLE runs")
                conn.execute("ALTER TABLE runs_widened RENAME TO runs")

    def _require_run(self, conn: sqlite3.Connection, run_id: int) -> tuple:
        """The run's row (in :data:`_RUN_COLUMNS` order); ``KeyError`` if there is none."""
        row = conn.execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise KeyError(f"run {run_id} not found in the run store {self.path}")
        return row

    @staticmethod
    def _check_status(status: str) -> str:
        if status not in STATUSES:
            raise ValueError(f"status: must be one of {', '.join(STATUSES)}, got {status!r}")
        return status

    # ------------------------------------------------------------------ writing

    def create_run(self, kind: str, config: dict, name: str | None = None, status: str = "running") -> int:
        """Insert a run and return its id. ``started_at`` is set now unless ``queued``."""
        self._check_status(status)
        if status in TERMINAL_STATUSES:
            raise ValueError(f"status: a new run cannot start as {status!r}")
        if not isinstance(config, dict):
            raise ValueError(f"config: expected a dict, got {type(config).__name__}")
        now = _now()
        with self._connect() as conn:
            cur = conn.execute(
                "INSERT INTO runs (kind, name, config, status, created_at, started_at) VALUES (?, ?, ?, ?, ?, ?)",
                (str(kind), name, _dumps(config, "config"), status, now, None if status == "queued" else now),
            )
            return int(cur.lastrowid)

    def log_metrics(self, run_id: int, step: int, values: dict[str, float]) -> None:
        """Append one step of metric values ``{name: value}`` (NaN is stored as NULL)."""
        rows = []
        for key, value in values.items():
            value = float(value)
            rows.append((int(run_id), int(step), str(key), None if math.isnan(value) else value))
        with self._connect() as conn:
            self._require_run(conn, run_id)
            conn.executemany("INSERT INTO metrics (run_id, step, name, value) VALUES (?, ?, ?, ?)", rows)

    def delete_metrics_after(self, run_id: int, step: int) -> None:
        """Drop the run's metric rows after ``step`` (a resumed run recomputes them)."""
        with self._connect() as conn:
            self._require_run(conn, run_id)
            conn.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (int(run_id), int(step)))

    def add_points(self, run_id: int, points: list[dict]) -> None:
        """Append result points, numbered after the run's existing ones.

        Each point is a dict with ``label`` (str), ``params`` (dict), ``values`` (K floats,
        maximised objective values; the same K for every point of a run) and optionally
        ``extra`` (dict).
        """
        sizes, rows = zip(*(self._point_row(i, p) for i, p in enumerate(points))) if points else ((), ())
        with self._connect() as conn:
            self._require_run(conn, run_id)
            start = conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM points WHERE run_id = ?", (int(run_id),)).fetchone()[0]
            stored = conn.execute("SELECT objective_values FROM points WHERE run_id = ? LIMIT 1", (int(run_id),)).fetchone()
            sizes = set(sizes) | ({len(json.loads(stored[0]))} if stored else set())
            if len(sizes) > 1:
                raise ValueError(f"points: every point of run {run_id} needs the same number of values, got {sorted(sizes)}")
            conn.executemany(
                "INSERT INTO points (run_id, idx, label, params, objective_values, extra) VALUES (?, ?, ?, ?, ?, ?)",
                [(int(run_id), start + i, *row) for i, row in enumerate(rows)],
            )

    @staticmethod
    def _point_row(i: int, point: dict) -> tuple[int, tuple[str, str, str, str | None]]:
        """``(K, row)``: the number of values and the stored columns of ``points[i]``."""
        missing = [k for k in _POINT_KEYS if k not in point]
        if missing:
            raise ValueError(f"points[{i}]: missing key(s) {missing}; need {list(_POINT_KEYS)}")
        try:
            values = np.atleast_1d(np.asarray(point["values"], dtype=float))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"points[{i}]['values']: not a list of numbers ({exc})") from None
        if values.ndim != 1:
            raise ValueError(f"points[{i}]['values']: expected a flat list of K floats, got shape {values.shape}")
        extra = point.get("extra")
        return len(values), (
            str(point["label"]),
            _dumps(point["params"], f"points[{i}]['params']"),
            _dumps(values, f"points[{i}]['values']"),
            None if extra is None else _dumps(extra, f"points[{i}]['extra']"),
        )

    def set_status(self, run_id: int, status: str, error: str | None = None) -> None:
        """Set a run's status (and error text). Terminal statuses set ``finished_at``;
        ``running`` sets ``started_at`` if it was not set."""
        self._check_status(status)
        with self._connect() as conn:
            self._require_run(conn, run_id)
            self.set_status_in(conn, run_id, status, error)

    def delete_run(self, run_id: int) -> None:
        """Delete a run with its metrics, points and marks."""
        with self._connect() as conn:
            self._require_run(conn, run_id)
            conn.execute("DELETE FROM runs WHERE id = ?", (int(run_id),))

    def rename_run(self, run_id: int, name: str | None) -> None:
        """Set a run's name (stripped; ``None`` or blank clears it). ``ValueError`` naming
        ``name`` for anything but text or ``None``."""
        if name is not None and not isinstance(name, str):
            raise ValueError(f"name: expected text or None, got {type(name).__name__}")
        with self._connect() as conn:
            self._require_run(conn, run_id)
            conn.execute("UPDATE runs SET name = ? WHERE id = ?", ((name or "").strip() or None, int(run_id)))

    def set_tags(self, run_id: int, tags) -> list[str]:
        """Replace a run's tags (:func:`parse_tags`: a comma-separated text or a list of texts);
        returns the tags stored."""
        tags = parse_tags(tags)
        with self._connect() as conn:
            self._require_run(conn, run_id)
            conn.execute("INSERT INTO run_marks (run_id, tags) VALUES (?, ?) "
                         "ON CONFLICT (run_id) DO UPDATE SET tags = excluded.tags", (int(run_id), json.dumps(tags)))
        return tags

    def set_hidden(self, run_id: int, hidden: bool) -> None:
        """Hide a run from the run pickers (``hidden``), or show it again."""
        with self._connect() as conn:
            self._require_run(conn, run_id)
            conn.execute("INSERT INTO run_marks (run_id, hidden) VALUES (?, ?) "
                         "ON CONFLICT (run_id) DO UPDATE SET hidden = excluded.hidden",
                         (int(run_id), int(bool(hidden))))

    @contextmanager
    def record(self, kind: str, config: dict, name: str | None = None) -> Iterator[int]:
        """Create a running run and yield its id.

        On normal exit the run becomes ``finished`` (unless the body already gave it a
        terminal status, e.g. ``cancelled``). An exception marks it ``failed`` with the
        exception text (``interrupted`` for ``KeyboardInterrupt``) and is re-raised.
        """
        run_id = self.create_run(kind, config, name=name)
        try:
            yield run_id
        except KeyboardInterrupt:
            self.set_status(run_id, "interrupted", error="KeyboardInterrupt")
            raise
        except Exception as exc:
            self.set_status(run_id, "failed", error=f"{type(exc).__name__}: {exc}")
            raise
        if self.get_status(run_id) not in TERMINAL_STATUSES:
            self.set_status(run_id, "finished")

    # ------------------------------------------------------------------ reading

    def get_status(self, run_id: int) -> str:
        """The run's current status."""
        with self._connect() as conn:
            return self._require_run(conn, run_id)[_RUN_COLUMNS.index("status")]

    def list_runs(self, kind: str | None = None, status: str | None = None) -> pd.DataFrame:
        """Runs, oldest first: id, kind, name, status, created_at, finished_at, n_points, tags (a
        list of texts) and hidden (bool)."""
        where, args = [], []
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if status is not None:
            where.append("status = ?")
            args.append(self._check_status(status))
        sql = (
            "SELECT id, kind, name, status, created_at, finished_at, "
            "(SELECT COUNT(*) FROM points WHERE points.run_id = runs.id) AS n_points, "
            "COALESCE(run_marks.tags, '[]'), COALESCE(run_marks.hidden, 0) "
            "FROM runs LEFT JOIN run_marks ON run_marks.run_id = runs.id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY id"
        )
        with self._connect() as conn:
            rows = [(*r[:-2], json.loads(r[-2]), bool(r[-1])) for r in conn.execute(sql, args).fetchall()]
        columns = ["id", "kind", "name", "status", "created_at", "finished_at", "n_points", "tags", "hidden"]
        return pd.DataFrame(rows, columns=columns).astype({"id": "int64", "n_points": "int64", "hidden": "bool"})

    def runs_with(self, key: str, value) -> list[int]:
        """Ids of the runs whose config holds ``value`` at top-level ``key`` (e.g. the runs
        writing to one checkpoint folder), oldest first."""
        with self._connect() as conn:
            return [int(r[0]) for r in conn.execute("SELECT id FROM runs WHERE json_extract(config, ?) = ? ORDER BY id",
                                                    (f"$.{key}", value))]

    def get_run(self, run_id: int) -> Run:
        """The run with its config, metric series and points (see :class:`Run`)."""
        with self._connect() as conn:
            row = dict(zip(_RUN_COLUMNS, self._require_run(conn, run_id)))
            metric_rows = conn.execute(
                "SELECT step, name, value FROM metrics WHERE run_id = ? ORDER BY name, step, rowid", (int(run_id),)
            ).fetchall()
            point_rows = conn.execute(
                "SELECT idx, label, params, objective_values, extra FROM points WHERE run_id = ? ORDER BY idx",
                (int(run_id),),
            ).fetchall()
        row["config"] = _loads(row["config"])
        metrics = pd.DataFrame(
            [(s, n, _float_or_nan(v)) for s, n, v in metric_rows], columns=["step", "name", "value"]
        ).astype({"step": "int64", "value": "float64"})
        return Run(**row, metrics=metrics, points=_points_frame(point_rows))

    def marker(self) -> str:
        """A short digest of what the run listing shows, read in one query without loading any
        point or metric: every run's id, status, name and end time, the tags and hide marks, the
        number (and largest row id) of stored points and metric rows, and the job queue's names.
        It changes with every write that changes :meth:`list_runs`, :meth:`progress`'s steps and
        point counts, or a run's points and metrics (rows are only appended or deleted), so a cache
        keyed by it (the Compare page's) is renewed after any such write, whoever made it."""
        parts = [
            "SELECT group_concat(id || ' ' || status || ' ' || COALESCE(name, '') || ' ' || "
            "COALESCE(finished_at, ''), '|') FROM runs",
            "SELECT group_concat(run_id || ' ' || tags || ' ' || hidden, '|') FROM run_marks",
            "SELECT COUNT(*) || ' ' || COALESCE(MAX(rowid), 0) FROM points",
            "SELECT COUNT(*) || ' ' || COALESCE(MAX(rowid), 0) FROM metrics",
        ]
        with self._connect() as conn:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone():
                parts.append("SELECT group_concat(id || ' ' || COALESCE(run_id, '') || ' ' || COALESCE(name, '') "
                             "|| ' ' || kind, '|') FROM jobs")
            row = conn.execute("SELECT " + ", ".join(f"({q})" for q in parts)).fetchone()
        return hashlib.sha1("\n".join(str(x) for x in row).encode()).hexdigest()

    def get_runs(self, run_ids) -> list[Run]:
        """The runs ``run_ids`` (in that order; a repeated id gives the same object), each as
        :meth:`get_run` returns it, read in three queries whatever their number (the Compare page
        loads its selection at once). ``KeyError`` naming the first id not in the store."""
        ids = [int(i) for i in run_ids]
        wanted = sorted(set(ids))
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))
        with self._connect() as conn:
            rows = {int(r[0]): r for r in conn.execute(
                f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE id IN ({marks})", wanted)}
            missing = [i for i in ids if i not in rows]
            if missing:
                raise KeyError(f"run {missing[0]} not found in the run store {self.path}")
            metric_rows = conn.execute(
                f"SELECT run_id, step, name, value FROM metrics WHERE run_id IN ({marks}) "
                "ORDER BY run_id, name, step, rowid", wanted).fetchall()
            point_rows = conn.execute(
                f"SELECT run_id, idx, label, params, objective_values, extra FROM points WHERE run_id IN ({marks}) "
                "ORDER BY run_id, idx", wanted).fetchall()
        metrics_of: dict[int, list] = {}
        for run_id, *rest in metric_rows:
            metrics_of.setdefault(run_id, []).append(rest)
        points_of: dict[int, list] = {}
        for run_id, *rest in point_rows:
            points_of.setdefault(run_id, []).append(tuple(rest))
        out = {}
        for run_id in wanted:
            row = dict(zip(_RUN_COLUMNS, rows[run_id]))
            row["config"] = _loads(row["config"])
            metrics = pd.DataFrame(
                [(s, n, _float_or_nan(v)) for s, n, v in metrics_of.get(run_id, [])], columns=["step", "name", "value"]
            ).astype({"step": "int64", "value": "float64"})
            out[run_id] = Run(**row, metrics=metrics, points=_points_frame(points_of.get(run_id, [])))
        return [out[i] for i in ids]

    def progress(self, run_ids) -> dict[int, dict]:
        """Where each of the given runs stands, in one query (the Train page polls it for its job
        table): ``{id: {"status", "error", "config", "step", "n_points"}}``, ``step`` being the
        last logged metric step (None before the first); ids not in the store are left out."""
        with self._connect() as conn:
            return self.progress_in(conn, run_ids)

    # ------------------------------------------------------------------ inside a caller's transaction
    # The job queue (mopo_core.training.jobs) changes a job and its run in one transaction on its
    # own connection to this file; these run their statement on the connection they are given.

    @staticmethod
    def progress_in(conn: sqlite3.Connection, run_ids) -> dict[int, dict]:
        """:meth:`progress` on the caller's connection."""
        ids = sorted({int(i) for i in run_ids if i is not None})
        if not ids:
            return {}
        rows = conn.execute(
            "SELECT id, status, error, config, (SELECT MAX(step) FROM metrics WHERE run_id = runs.id), "
            "(SELECT COUNT(*) FROM points WHERE run_id = runs.id) "
            f"FROM runs WHERE id IN ({', '.join('?' * len(ids))})", ids).fetchall()
        return {int(r[0]): {"status": r[1], "error": r[2], "config": _loads(r[3]), "step": r[4], "n_points": r[5]}
                for r in rows}

    @staticmethod
    def set_status_in(conn: sqlite3.Connection, run_id: int, status: str, error: str | None = None) -> None:
        """:meth:`set_status` on the caller's connection (a missing run is not an error here)."""
        RunStore._check_status(status)
        now = _now()
        conn.execute(
            "UPDATE runs SET status = ?, error = ?, started_at = COALESCE(started_at, ?), finished_at = ? WHERE id = ?",
            (
                status,
                error,
                now if status == "running" else None,
                now if status in TERMINAL_STATUSES else None,
                int(run_id),
            ),
        )

    @staticmethod
    def latest_run_in(conn: sqlite3.Connection, kind: str, key: str, value) -> int | None:
        """The newest run of ``kind`` whose config holds ``value`` at top-level ``key`` (e.g. the
        train run writing to a checkpoint folder), on the caller's connection; None if none."""
        row = conn.execute("SELECT id FROM runs WHERE kind = ? AND json_extract(config, ?) = ? ORDER BY id DESC LIMIT 1",
                           (str(kind), f"$.{key}", value)).fetchone()
        return None if row is None else int(row[0])

    # ------------------------------------------------------------------ export

    def export_run(self, run_id: int, path: str | os.PathLike, fmt: str | None = None) -> list[Path]:
        """Write a run to ``path`` and return the files written.

        ``fmt`` ("csv" or "json") defaults to the suffix of ``path``. CSV: the points
        (params/values/extra as JSON text, values expanded as v0..v{K-1}, the config as a
        JSON column), and the metrics in a sibling ``<stem>_metrics.csv``. JSON: one
        document ``{"run", "config", "metrics", "points"}``.
        """
        path = Path(path)
        fmt = (fmt or path.suffix.lstrip(".")).lower()
        if fmt not in ("csv", "json"):
            raise ValueError(f"fmt: cannot export to {fmt or path.name!r}; use a .csv or .json path or fmt='csv'/'json'")
        run = self.get_run(run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "json":
            path.write_text(json.dumps(_run_document(run), indent=2, allow_nan=False))
            return [path]
        points = run.points.copy()
        for column in ("params", "values", "extra"):
            points[column] = [json.dumps(v, allow_nan=False) for v in points[column].map(to_jsonable)]
        points.insert(0, "run_id", run.id)
        points["config"] = json.dumps(run.config)
        points.to_csv(path, index=False)
        metrics_path = path.with_name(f"{path.stem}_metrics.csv")
        run.metrics.to_csv(metrics_path, index=False)
        return [path, metrics_path]


def _points_frame(rows: list[tuple]) -> pd.DataFrame:
    """Points DataFrame from stored rows, values expanded as v0..v{K-1}."""
    frame = pd.DataFrame(
        [(idx, label, _loads(params), _loads(vals), _loads(extra)) for idx, label, params, vals, extra in rows],
        columns=["idx", "label", "params", "values", "extra"],
    ).astype({"idx": "int64"})
    k = max((len(v) for v in frame["values"]), default=0)
    for j in range(k):
        frame[f"v{j}"] = [_float_or_nan(v[j]) for v in frame["values"]]
    return frame


def _run_document(run: Run) -> dict:
    """The JSON export of a run: run fields, config, metrics and points (NaN as null)."""
    fields = {f.name: getattr(run, f.name) for f in dataclasses.fields(run)}
    header = {k: v for k, v in fields.items() if k not in ("config", "metrics", "points")}
    metrics = run.metrics.to_dict(orient="records")
    points = run.points[["idx", "label", "params", "values", "extra"]].to_dict(orient="records")
    return to_jsonable({"run": header, "config": run.config, "metrics": metrics, "points": points}, "run")


# ---------------------------------------------------------------------------- run owners
# A run has one owner: the process training it. The trainer (mopo_core.lm.trainer), in the job
# queue's worker or the ``train`` command alike, records its pid and start time with
# :func:`claim_run` (refused, naming the process, while another live process owns the run: the
# check and the record are one transaction) and removes the record with :func:`release_run`
# when training returns or raises. A killed process leaves its record behind; a record whose
# process is gone (or whose pid now belongs to a process with another start time, see
# mopo_core.processes) does not count, so such a run can be resumed. :func:`check_run_owner`
# is the same check without the claim, for refusing early (before a model is built).

#: ``run_owners``: one row per owned run, created beside the tables above the first time a
#: store's run is claimed or checked (the schema version is unchanged).
_OWNERS_TABLE = """
CREATE TABLE IF NOT EXISTS run_owners (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
    pid INTEGER NOT NULL,
    pid_start INTEGER,
    claimed_at TEXT NOT NULL
)"""


@contextmanager
def transaction(path: str | os.PathLike, immediate: bool = False,
                foreign_keys: bool = True) -> Iterator[sqlite3.Connection]:
    """One transaction on a fresh connection to the SQLite file at ``path``, committed (rolled
    back on any exception) and closed. ``immediate`` takes the write lock at once, which every
    transaction that writes must do: a deferred one that reads first and writes later fails at
    once with "database is locked" (SQLite's WAL snapshot rule) when another process wrote
    meanwhile, whatever the timeout. ``foreign_keys`` is set before the transaction begins
    (SQLite ignores the pragma inside one)."""
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        conn.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


@contextmanager
def _owners(store_path: str | os.PathLike) -> Iterator[tuple[sqlite3.Connection, Path]]:
    """(connection, the store's absolute path): one transaction holding the store's write lock
    from its start (``BEGIN IMMEDIATE``: a check and the change it allows are atomic across
    processes), with the run tables and ``run_owners`` created."""
    path = Path(store_path).expanduser().resolve()
    RunStore(path)
    with transaction(path, immediate=True) as conn:
        conn.execute(_OWNERS_TABLE)
        yield conn, path


def _live_owner(conn: sqlite3.Connection, run_id: int) -> tuple[int, str] | None:
    """(pid, since when) of the live process that owns ``run_id``; ``None`` when there is none."""
    row = conn.execute("SELECT pid, pid_start, claimed_at FROM run_owners WHERE run_id = ?", (int(run_id),)).fetchone()
    return None if row is None or not alive(row[0], row[1]) else (row[0], row[2])


def _owned_error(run_id: int, pid: int, since: str) -> ValueError:
    who = f"process {pid}" + (" (this process)" if pid == os.getpid() else "")
    return ValueError(f"run {run_id}: {who} is training it (its owner since {since}); a run has one owner: "
                      f"stop that process or wait for it to end before resuming the run")


def check_run_owner(store_path: str | os.PathLike, run_id: int) -> None:
    """``ValueError`` naming the process when a live process owns run ``run_id``."""
    with _owners(store_path) as (conn, _):
        owner = _live_owner(conn, run_id)
    if owner is not None:
        raise _owned_error(run_id, *owner)


def claim_run(store_path: str | os.PathLike, run_id: int) -> None:
    """Record this process (pid and start time) as the owner of run ``run_id``; ``ValueError``
    for a run not in the store, and naming the process when another live process owns it
    (checked in the same transaction)."""
    with _owners(store_path) as (conn, path):
        if conn.execute("SELECT 1 FROM runs WHERE id = ?", (int(run_id),)).fetchone() is None:
            raise ValueError(f"run {run_id}: not found in the run store {path}")
        owner = _live_owner(conn, run_id)
        if owner is not None:
            raise _owned_error(run_id, *owner)
        conn.execute("INSERT OR REPLACE INTO run_owners (run_id, pid, pid_start, claimed_at) VALUES (?, ?, ?, ?)",
                     (int(run_id), os.getpid(), process_start(os.getpid()), _now()))


def release_run(store_path: str | os.PathLike, run_id: int) -> None:
    """Remove this process's ownership of run ``run_id`` (nothing when another process owns it)."""
    with _owners(store_path) as (conn, _):
        conn.execute("DELETE FROM run_owners WHERE run_id = ? AND pid = ? AND pid_start IS ?",
                     (int(run_id), os.getpid(), process_start(os.getpid())))
