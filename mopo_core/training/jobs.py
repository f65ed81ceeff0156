"""A persistent queue of training jobs and the worker process that runs them.

The app (or anything else) enqueues jobs; one worker process per run store takes them one at
a time and trains it through its task (:mod:`mopo_core.training.tasks`), writing metrics,
status and points to the run store like the ``train`` command does. The app polls the store; it never trains in its
own process, so a crash or an out-of-memory kill of the worker leaves the app running.

Storage. Two tables in the run store's own SQLite file (WAL mode, one connection per
operation), created here beside RunStore's tables (its schema version is unchanged):
``jobs`` (one row per job) and ``job_workers`` (one row per worker process ever started: pid,
its start time, the owning app's pid and start time, when and why it ended). Keeping them in
the store's file makes every check-and-change atomic across processes (``BEGIN IMMEDIATE``):
a job's status and its run's status change in one transaction, a claim cannot race a cancel,
and "is a worker running? if not, start one" cannot start two. Processes are identified by
pid *and* start time (:mod:`mopo_core.processes`), so a reused pid (a container restart numbers
processes from 1 again) is not mistaken for the old process. Per store, worker files live in
``<store folder>/<store stem>-jobs/``: ``worker.log`` (the workers' stdout and stderr) and
``checkpoints/job-<id>/`` (every job's run has a checkpoint folder, with a checkpoint from step
0 on, so every run is resumable). Columns added to ``jobs`` later (:data:`_ADDED_COLUMNS`) are
added to an older store when it is opened, its rows keeping their values.

Preparation progress. Before a job's run exists the worker prepares it: a text-task job's
reference model is fitted (or read from its cache) and a dataset job's model, data and judge
are loaded. The worker records how far it is on the job's row (:func:`record_progress`:
``Job.progress``, a fraction in [0, 1] that never decreases during a fit and ends at 1.0, or
``None`` while loading, and ``Job.progress_text``); the Train page draws it as a bar.

Job kinds: one per training task, its :attr:`~mopo_core.training.tasks.TrainingTask.job_kind`
(``train_text``: a :class:`TrainConfig` and a :class:`TextTaskSetup`; ``train_dataset``: a
:class:`TrainConfig` and a :class:`DatasetSetup`, a local checkpoint trained on a preference
file and judged by a preference model), run by the task's ``train``, and ``resume`` (a run id
of either task, continued by its task's ``resume`` from its checkpoint; the task is
:func:`mopo_core.training.tasks.task_of_run`'s). Consecutive jobs on the same setup share what
their task loads once (:meth:`~mopo_core.training.tasks.TrainingTask.load`: for a
:class:`DatasetSetup`, the model, judge and reference samples) in the worker.

Job states::

    queued --claimed by the worker--> running --run finished (with its point)--> done
       |                                 |----cancel(), after the current step--> cancelled
       |                                 |----exception in training------------> failed
       |                                 |----run diverged (its run: diverged)--> failed
       |                                 |----app gone / SIGTERM, after the step-> interrupted
       |                                 `----worker died (found by reconcile)--> failed | interrupted
       `--cancel()--> cancelled (at once)

``done``, ``cancelled``, ``failed`` and ``interrupted`` are final; a run that ended
``cancelled``, ``failed`` or ``interrupted`` is continued by a new ``resume`` job
(:func:`enqueue_resume`).

The worker is tied to the app that started it. :func:`ensure_worker` records the calling
process as the worker's owner; the worker checks after every training step (and between
jobs) that its owner is alive. When the owner is gone (the app was restarted or killed) the
worker stops the run after the current step, marks the run and its job ``interrupted`` and
exits; queued jobs stay queued for the next app's worker. SIGTERM or SIGINT to the worker do
the same (a second one stops at once). A worker started by hand (``python -m mopo_core.cli.worker
--store FILE``) has no owner and serves until the queue is empty.

Failed versus interrupted, when a worker dies without ending its job (SIGKILL, out-of-memory
kill, a crash), as decided by :func:`reconcile`: if the worker's owner is still alive, the
worker died on its own: the job and its run become ``failed`` with the reason (the exit
status, e.g. "killed by SIGKILL", when the reconciling process is the worker's parent and
can collect it; otherwise that the process is gone). If the owner is gone too (the whole app
went down, e.g. a server or container restart), the run was interrupted by the restart: job
and run become ``interrupted``. Either way the run keeps its checkpoint and can be resumed.
A run that had already ended when its worker died keeps its status (a run found ``finished``
without its point, i.e. killed during the evaluation, is treated as still running).

The worker exits when the queue is empty. The app calls :func:`reconcile` at start and on each
poll, and :func:`ensure_worker` after enqueueing and on each poll (cheap when a worker runs;
it restarts the queue after a worker stopped between jobs). Runs not started by a job (the
``train`` command) are not touched here (``python -m mopo_core runs mark-interrupted``).

Run owners. Every training process, the worker's and the ``train`` command's alike, owns the
run it trains, recorded in the run store (:func:`mopo_core.runs.claim_run`): a run whose owner
is alive is not resumed.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from mopo_core.processes import alive, process_start
from mopo_core.lm.config import CHECKPOINT_NAME
from mopo_core.runs import RunStore, to_jsonable, transaction
from mopo_core.training.tasks import TASKS, task_for_setup, task_of, task_of_job_kind, task_of_run, train_config_from

if TYPE_CHECKING:  # the app imports this module without torch until it trains
    from mopo_core.lm.config import TrainConfig
    from mopo_core.training.dataset_task import DatasetSetup
    from mopo_core.training.text_task import TextTaskSetup

#: A new run of each task, and ``resume`` (a stored run of either task, continued).
JOB_KINDS = (*(task.job_kind for task in TASKS.values()), "resume")
JOB_STATUSES = ("queued", "running", "done", "cancelled", "failed", "interrupted")
#: Statuses of jobs that are not over.
ACTIVE_STATUSES = ("queued", "running")
#: Run statuses a ``resume`` job can start from.
RESUMABLE_RUN_STATUSES = ("cancelled", "interrupted", "failed")
#: Exit status of a worker that found another live worker on its store.
EXIT_ANOTHER_WORKER = 3

_JOBS_TABLE = f"""(
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN {JOB_KINDS!r}),
    name TEXT,
    spec TEXT NOT NULL,
    checkpoint_dir TEXT,
    status TEXT NOT NULL CHECK (status IN {JOB_STATUSES!r}),
    run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker_id INTEGER REFERENCES job_workers(id),
    error TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    progress REAL,
    progress_text TEXT
)"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS job_workers (
    id INTEGER PRIMARY KEY,
    pid INTEGER NOT NULL,
    pid_start INTEGER,
    owner_pid INTEGER,
    owner_start INTEGER,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    end_reason TEXT
);
CREATE TABLE IF NOT EXISTS jobs {_JOBS_TABLE};
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, id);
"""
_JOB_SELECT = ("SELECT jobs.id, kind, name, spec, checkpoint_dir, status, run_id, cancel_requested, pid, error, "
               "created_at, jobs.started_at, jobs.ended_at, progress, progress_text "
               "FROM jobs LEFT JOIN job_workers ON worker_id = job_workers.id")
#: Columns added to ``jobs`` after its first release (name, SQL type): added to an older store when it is opened.
_ADDED_COLUMNS = (("progress", "REAL"), ("progress_text", "TEXT"))

#: Workers started by this process: (pid, start time) -> Popen, to collect their exit status.
_children: dict[tuple[int, int | None], subprocess.Popen] = {}
#: Stores whose job tables this process has created or checked.
_prepared: set[Path] = set()


@dataclass
class Job:
    """One queued, running or ended job. ``config``/``setup``: the TrainConfig and
    TextTaskSetup (``train_text``) or DatasetSetup (``train_dataset``) fields (``None`` for
    ``resume``); ``run_id``: the
    run once it exists (set at enqueue for ``resume``); ``worker_pid``: the worker that took
    it; timestamps are ISO-8601 UTC strings. ``progress``/``progress_text``: the worker's last
    word on the job's preparation before its first training step (:func:`record_progress`):
    a fraction in [0, 1] (``None`` when the step cannot be measured, e.g. loading a model) and
    a sentence; ``None`` before the worker said anything."""

    id: int
    kind: str
    name: str | None
    config: dict | None
    setup: dict | None
    checkpoint_dir: str | None
    status: str
    run_id: int | None
    cancel_requested: bool
    worker_pid: int | None
    error: str | None
    created_at: str
    started_at: str | None
    ended_at: str | None
    progress: float | None = None
    progress_text: str | None = None


# ---------------------------------------------------------------------------- storage


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def jobs_dir(store_path: str | os.PathLike) -> Path:
    """The store's folder for worker files: ``<store folder>/<store stem>-jobs``."""
    path = Path(store_path).expanduser().resolve()
    return path.parent / f"{path.stem}-jobs"


def _prepare(store_path: str | os.PathLike) -> Path:
    """The store's absolute path, with the run store's and the job tables created."""
    path = Path(store_path).expanduser().resolve()
    if path not in _prepared:
        RunStore(path)
        conn = sqlite3.connect(path, timeout=30.0)
        try:
            conn.executescript(_SCHEMA)
        finally:
            conn.close()
        _add_columns(path)
        _widen_job_kinds(path)
        _prepared.add(path)
    return path


def _add_columns(path: Path) -> None:
    """Add :data:`_ADDED_COLUMNS` to a ``jobs`` table written before them (its rows get ``NULL``
    there), so that an older store opens and its jobs keep their values."""
    with transaction(path, immediate=True, foreign_keys=False) as conn:
        present = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        for name, kind in _ADDED_COLUMNS:
            if name not in present:
                conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")


def _widen_job_kinds(path: Path) -> None:
    """Rebuild a ``jobs`` table written before the newest job kind existed (its CHECK lists
    fewer kinds), keeping every row: SQLite cannot change a CHECK in place."""
    with transaction(path, immediate=True, foreign_keys=False) as conn:
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone()
        if all(repr(kind) in sql for kind in JOB_KINDS):
            return
        conn.execute(f"CREATE TABLE jobs_widened {_JOBS_TABLE}")
        conn.execute("INSERT INTO jobs_widened SELECT * FROM jobs")
        conn.execute("DROP TABLE jobs")
        conn.execute("ALTER TABLE jobs_widened RENAME TO jobs")
        conn.execute("CREATE INDEX jobs_by_status ON jobs (status, id)")


def _job_from_row(row: tuple) -> Job:
    (job_id, kind, name, spec, checkpoint_dir, status, run_id, cancel, pid, error, created, started, ended, progress,
     progress_text) = row
    spec = json.loads(spec)
    return Job(job_id, kind, name, spec.get("config"), spec.get("setup"), checkpoint_dir, status, run_id,
               bool(cancel), pid, error, created, started, ended, progress, progress_text)


def _require_job(conn: sqlite3.Connection, path: Path, job_id: int) -> Job:
    row = conn.execute(f"{_JOB_SELECT} WHERE jobs.id = ?", (int(job_id),)).fetchone()
    if row is None:
        raise KeyError(f"job {job_id} not found in the run store {path}")
    return _job_from_row(row)


def _end_job(conn: sqlite3.Connection, job_id: int, status: str, error: str | None = None,
             run_id: int | None = None) -> None:
    """Give a job its final status (and its run, when it is known now)."""
    conn.execute("UPDATE jobs SET status = ?, error = ?, run_id = COALESCE(?, run_id), ended_at = ? WHERE id = ?",
                 (status, error, run_id, _now(), job_id))


# ---------------------------------------------------------------------------- the app's side


def enqueue_training(store_path: str | os.PathLike, config: TrainConfig, setup: TextTaskSetup | DatasetSetup,
                     name: str | None = None, models_folder: str | os.PathLike | None = None) -> int:
    """Queue a training run and return the job id: on the synthetic text task (``setup`` a
    :class:`TextTaskSetup`) or on a preference file with a local checkpoint (a
    :class:`DatasetSetup`, its model found in ``models_folder``'s registry when it is a name).
    Config and setup are checked now against each other by the setup's task (``ValueError``
    naming the field; for a dataset, :func:`mopo_core.training.dataset_task.check_setup`: data,
    splits, checkpoint folder, judge); the run's checkpoint folder is
    ``<jobs_dir>/checkpoints/job-<id>``. Call :func:`ensure_worker` next."""
    task = task_for_setup(setup)
    task.check(config, setup, models_folder)
    kind = task.job_kind
    spec = json.dumps(to_jsonable({"config": asdict(config), "setup": asdict(setup)}, "job"), allow_nan=False)
    path = _prepare(store_path)
    with transaction(path, immediate=True) as conn:
        job_id = int(conn.execute("INSERT INTO jobs (kind, name, spec, status, created_at) VALUES (?, ?, ?, ?, ?)",
                                  (kind, name, spec, "queued", _now())).lastrowid)
        checkpoint_dir = jobs_dir(path) / "checkpoints" / f"job-{job_id}"
        conn.execute("UPDATE jobs SET checkpoint_dir = ? WHERE id = ?", (str(checkpoint_dir), job_id))
    return job_id


def enqueue_resume(store_path: str | os.PathLike, run_id: int, name: str | None = None) -> int:
    """Queue a job that continues train run ``run_id`` (text task or dataset) from its
    checkpoint; return the job id. ``ValueError`` (saying why) for an unknown run, one that is
    not such a train run with a checkpoint folder, one whose status is not one of
    :data:`RESUMABLE_RUN_STATUSES` (a ``running`` run may still be training somewhere: call
    :func:`reconcile` first), one without its checkpoint file, or one that already has a
    queued or running job."""

    path = _prepare(store_path)
    try:
        run = RunStore(path).get_run(run_id)
    except KeyError:
        raise ValueError(f"run {run_id}: not found in the run store {path}") from None
    checkpoint_dir = run.config.get("checkpoint_dir")
    if task_of(run) is None or not checkpoint_dir:
        raise ValueError(f"run {run_id}: only train runs (text task or dataset) with a checkpoint folder can be resumed "
                         f"(kind {run.kind!r}, task {run.config.get('task')!r}, checkpoint_dir {checkpoint_dir!r})")
    if run.status not in RESUMABLE_RUN_STATUSES:
        raise ValueError(f"run {run_id}: status is {run.status!r}; only runs that are "
                         f"{', '.join(RESUMABLE_RUN_STATUSES)} can be resumed")
    if not (Path(checkpoint_dir) / CHECKPOINT_NAME).exists():
        raise ValueError(f"run {run_id}: no checkpoint at {Path(checkpoint_dir) / CHECKPOINT_NAME}")
    with transaction(path, immediate=True) as conn:
        active = conn.execute("SELECT id, status FROM jobs WHERE run_id = ? AND status IN (?, ?)",
                              (int(run_id), *ACTIVE_STATUSES)).fetchone()
        if active is not None:
            raise ValueError(f"run {run_id}: job {active[0]} is already {active[1]} for it")
        return int(conn.execute(
            "INSERT INTO jobs (kind, name, spec, checkpoint_dir, status, run_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ("resume", name or f"resume run {run_id}", "{}", checkpoint_dir, "queued", int(run_id), _now()),
        ).lastrowid)


def cancel(store_path: str | os.PathLike, job_id: int) -> str:
    """Cancel a job and return its status after the call: a queued job is ``cancelled`` at
    once; a running one stays ``running`` with a cancel request that its worker sees after
    the current training step (the run then ends ``cancelled``, checkpoint kept, and the job
    too). ``KeyError`` for an unknown job, ``ValueError`` for one that has ended."""
    path = _prepare(store_path)
    with transaction(path, immediate=True) as conn:
        job = _require_job(conn, path, job_id)
        if job.status == "queued":
            _end_job(conn, job.id, "cancelled", "cancelled before it started")
            return "cancelled"
        if job.status != "running":
            raise ValueError(f"job {job_id}: already ended ({job.status}); nothing to cancel")
        conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job.id,))
        return "running"


def clear_ended(store_path: str | os.PathLike) -> list[int]:
    """Remove the jobs that have ended (done, cancelled, failed, interrupted) from the queue and return their
    ids, oldest first; their runs, points and checkpoints stay in the run store. Kept: the jobs not over,
    and the latest job of a run that can still be resumed (its status one of
    :data:`RESUMABLE_RUN_STATUSES`), which is where the Train page offers Resume."""
    path = _prepare(store_path)
    with transaction(path, immediate=True) as conn:
        ended = conn.execute(f"SELECT id, run_id FROM jobs WHERE status NOT IN ({', '.join('?' * len(ACTIVE_STATUSES))}) "
                             "ORDER BY id", ACTIVE_STATUSES).fetchall()
        latest = dict(conn.execute("SELECT run_id, MAX(id) FROM jobs WHERE run_id IS NOT NULL GROUP BY run_id"))
        statuses = RunStore.progress_in(conn, sorted({r for _, r in ended if r is not None}))
        cleared = [job_id for job_id, run_id in ended
                   if not (run_id is not None and latest.get(run_id) == job_id
                           and statuses.get(run_id, {}).get("status") in RESUMABLE_RUN_STATUSES)]
        conn.executemany("DELETE FROM jobs WHERE id = ?", [(job_id,) for job_id in cleared])
    return cleared


def record_progress(store_path: str | os.PathLike, job_id: int, fraction: float | None, text: str) -> None:
    """Record how far job ``job_id``'s preparation is (what the worker does before the run's
    first step: the text task's reference fit, a dataset's model, data and judge): ``fraction``
    in [0, 1] (``None``: not measurable) and ``text``, a sentence for the Train page. The
    worker calls it; ``ValueError`` naming ``fraction`` outside [0, 1], ``KeyError`` for an
    unknown job."""
    if fraction is not None and not 0.0 <= fraction <= 1.0:  # (NaN fails both comparisons)
        raise ValueError(f"fraction: expected a number in [0, 1] or None, got {fraction!r}")
    path = _prepare(store_path)
    with transaction(path, immediate=True) as conn:
        changed = conn.execute("UPDATE jobs SET progress = ?, progress_text = ? WHERE id = ?",
                               (None if fraction is None else float(fraction), str(text), int(job_id))).rowcount
        if not changed:
            raise KeyError(f"job {job_id} not found in the run store {path}")


def get_job(store_path: str | os.PathLike, job_id: int) -> Job:
    """The job ``job_id``; ``KeyError`` if there is none."""
    path = _prepare(store_path)
    with transaction(path) as conn:
        return _require_job(conn, path, job_id)


def list_jobs(store_path: str | os.PathLike, status: str | None = None) -> list[Job]:
    """All jobs (or those with ``status``), oldest first."""
    if status is not None and status not in JOB_STATUSES:
        raise ValueError(f"status: must be one of {', '.join(JOB_STATUSES)}, got {status!r}")
    path = _prepare(store_path)
    where, args = (" WHERE status = ?", (status,)) if status is not None else ("", ())
    with transaction(path) as conn:
        return [_job_from_row(r) for r in conn.execute(f"{_JOB_SELECT}{where} ORDER BY jobs.id", args)]


def ensure_worker(store_path: str | os.PathLike) -> int | None:
    """Make sure a worker serves the store's queue and return its pid; ``None`` when no
    worker runs and nothing is queued. Starts ``python -m mopo_core.cli.worker`` (its own
    session, output appended to ``<jobs_dir>/worker.log``, this process as its owner) only
    when no live worker is registered; the check and the start hold the store's write lock,
    so concurrent callers (threads or processes) never start two. A worker whose app is gone
    does not count (it stops after its current step and takes no new job). Call it after
    enqueueing and on each poll: a worker stopped by a signal between two jobs leaves the
    queue to the next call."""
    path = _prepare(store_path)
    with transaction(path, immediate=True) as conn:
        serving = _serving_workers(conn)
        if serving:
            return serving[0][1]
        if conn.execute("SELECT 1 FROM jobs WHERE status = 'queued'").fetchone() is None:
            return None
        pid, start = _spawn_worker(path)
        conn.execute("INSERT INTO job_workers (pid, pid_start, owner_pid, owner_start, started_at) VALUES (?, ?, ?, ?, ?)",
                     (pid, start, os.getpid(), process_start(os.getpid()), _now()))
        return pid


def reconcile(store_path: str | os.PathLike) -> list[Job]:
    """Settle the jobs whose worker died without ending them (see the module doc: ``failed``
    while the worker's app is alive, ``interrupted`` when it is gone too) and return them as
    changed. Their runs change in the same transaction: a run left ``running`` (or
    ``finished`` without its point) takes the job's status and reason; a run that had ended
    keeps its status (a ``finished`` run with its point makes the job ``done``, a cancelled
    run whose job asked for it ``cancelled``). Idempotent; safe while a worker runs."""
    path = _prepare(store_path)
    with transaction(path, immediate=True) as conn:
        _close_dead_workers(conn)
        orphans = conn.execute(
            "SELECT jobs.id, pid, owner_pid, owner_start, end_reason FROM jobs JOIN job_workers "
            "ON worker_id = job_workers.id WHERE status = 'running' AND job_workers.ended_at IS NOT NULL ORDER BY jobs.id"
        ).fetchall()
        for job_id, pid, owner_pid, owner_start, end_reason in orphans:
            status, reason = _verdict(pid, owner_pid, owner_start, end_reason)
            _settle(conn, _require_job(conn, path, job_id), status, reason)
        return [_require_job(conn, path, job_id) for job_id, *_ in orphans]


def _verdict(pid: int, owner_pid: int | None, owner_start: int | None, end_reason: str) -> tuple[str, str]:
    """(status, reason) for a job whose worker ``pid`` died, by the rule in the module doc."""
    if owner_pid is not None and not _alive(owner_pid, owner_start):
        return "interrupted", (f"worker process {pid} {end_reason}, and so is the app process {owner_pid} that "
                               f"started it (an app restart); resume the run to continue")
    return "failed", f"worker process {pid} {end_reason} during the job"


def _settle(conn: sqlite3.Connection, job: Job, status: str, reason: str) -> None:
    """End ``job`` (its worker died) with ``status``/``reason`` and its run as the doc of
    :func:`reconcile` says."""
    run_id = (job.run_id if job.run_id is not None
              else RunStore.latest_run_in(conn, "train", "checkpoint_dir", job.checkpoint_dir))
    run_status = _run_status(conn, run_id)
    if run_status == "finished":
        _end_job(conn, job.id, "done", run_id=run_id)
    elif run_status == "cancelled" and job.cancel_requested:
        _end_job(conn, job.id, "cancelled", run_id=run_id)
    elif run_status == "unfinished":
        RunStore.set_status_in(conn, run_id, status, reason)
        _end_job(conn, job.id, status, reason, run_id)
    elif run_id is None:
        _end_job(conn, job.id, status, f"{reason} (it died before its run was created; enqueue it again)")
    else:
        _end_job(conn, job.id, status, f"{reason} (its run {run_id} had already ended {run_status})", run_id)


def _run_status(conn: sqlite3.Connection, run_id: int | None) -> str | None:
    """The run's status, but ``"unfinished"`` for a run left ``running`` or ``finished``
    without its point (its process died during the evaluation); ``None`` without a run."""
    state = None if run_id is None else RunStore.progress_in(conn, [run_id]).get(run_id)
    if state is None:
        return None
    status, has_point = state["status"], state["n_points"] > 0
    return "unfinished" if status == "running" or (status == "finished" and not has_point) else status


# ---------------------------------------------------------------------------- processes


def _alive(pid: int, start: int | None) -> bool:
    """:func:`mopo_core.processes.alive`, and a worker this process started that has exited is
    collected (no zombie) and not alive."""
    child = _children.get((pid, start))
    if child is not None and child.poll() is not None:
        return False
    return alive(pid, start)


def _exit_note(pid: int, start: int | None) -> str:
    """How worker ``pid`` ended: its exit status when it is this process's child, else that it is gone."""
    child = _children.get((pid, start))
    if child is None or child.returncode is None:
        return "is gone (no exit status: not a child of this process; killed, e.g. SIGKILL, or crashed)"
    code = child.returncode
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"


def _close_dead_workers(conn: sqlite3.Connection) -> None:
    """Mark registered workers that are no longer alive as ended, saying how (and collect
    this process's exited workers, so none is left a zombie)."""
    for child in _children.values():
        child.poll()
    for worker_id, pid, start in conn.execute("SELECT id, pid, pid_start FROM job_workers WHERE ended_at IS NULL").fetchall():
        if not _alive(pid, start):
            conn.execute("UPDATE job_workers SET ended_at = ?, end_reason = ? WHERE id = ?",
                         (_now(), _exit_note(pid, start), worker_id))


def _serving_workers(conn: sqlite3.Connection) -> list[tuple[int, int, int | None]]:
    """(row id, pid, start) of the live workers that serve the queue: those without an owner
    or whose owner is alive (one whose app is gone finishes its step and stops)."""
    _close_dead_workers(conn)
    rows = conn.execute("SELECT id, pid, pid_start, owner_pid, owner_start FROM job_workers WHERE ended_at IS NULL")
    return [(worker_id, pid, start) for worker_id, pid, start, owner_pid, owner_start in rows.fetchall()
            if owner_pid is None or _alive(owner_pid, owner_start)]


def _spawn_worker(path: Path) -> tuple[int, int | None]:
    """Start a worker process for the store at ``path`` (its own session, output to the
    log); its pid and start time."""
    log_dir = jobs_dir(path)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "worker.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mopo_core.cli.worker", "--store", str(path)],
                                cwd=Path(__file__).resolve().parents[2], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    start = process_start(proc.pid)
    _children[(proc.pid, start)] = proc
    return proc.pid, start


# ---------------------------------------------------------------------------- the worker


class WorkerAlreadyRunning(RuntimeError):
    """Another live worker serves the store."""


def _register_worker(path: Path) -> tuple[int, int | None, int | None]:
    """This process's worker row (id, owner pid, owner start): the row :func:`ensure_worker`
    wrote for it, or a new ownerless one when started by hand. ``WorkerAlreadyRunning`` when
    another live worker is registered."""
    pid, start = os.getpid(), process_start(os.getpid())
    with transaction(path, immediate=True) as conn:
        mine = conn.execute("SELECT id, owner_pid, owner_start FROM job_workers WHERE ended_at IS NULL AND pid = ? "
                            "AND pid_start IS ?", (pid, start)).fetchone()
        if mine is not None:
            return mine
        serving = _serving_workers(conn)
        if serving:
            raise WorkerAlreadyRunning(f"worker process {serving[0][1]} already serves the run store {path}")
        worker_id = conn.execute("INSERT INTO job_workers (pid, pid_start, started_at) VALUES (?, ?, ?)",
                                 (pid, start, _now())).lastrowid
        return int(worker_id), None, None


def _retire(conn: sqlite3.Connection, worker_id: int, reason: str) -> None:
    conn.execute("UPDATE job_workers SET ended_at = ?, end_reason = ? WHERE id = ?", (_now(), reason, worker_id))


class _Worker:
    """The worker process's loop: claim a job, train it, end it; stop when the queue is
    empty, the owner is gone or a signal came (see the module doc)."""

    def __init__(self, path: Path, worker_id: int, owner_pid: int | None, owner_start: int | None):
        self.path, self.id, self.owner = path, worker_id, (owner_pid, owner_start)
        self.stop_reason: str | None = None  # why the worker stops (owner gone, signal): runs end interrupted
        self.job: Job | None = None
        self.trainer = None
        self.run_id: int | None = None
        self.loaded = None  # what the last job's task loaded (TrainingTask.load), reused by the next on its setup

    def serve(self) -> int:
        """Run jobs until the queue is empty or the worker must stop; the exit status."""
        while (job := self._claim_next()) is not None:
            try:
                self._run(job)
            except KeyboardInterrupt:
                with transaction(self.path, immediate=True) as conn:
                    _retire(conn, self.id, "stopped at once by a second signal")
                return 130
        return 0

    def _claim_next(self) -> Job | None:
        """Mark the oldest queued job ``running`` by this worker and return it. When none is
        queued or the worker must stop, retire the worker in the same transaction (so that
        :func:`ensure_worker` then starts a new one for jobs enqueued later) and return ``None``."""
        with transaction(self.path, immediate=True) as conn:
            self._check_owner()
            row = conn.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1").fetchone()
            if self.stop_reason is not None or row is None:
                _retire(conn, self.id, f"stopped: {self.stop_reason}" if self.stop_reason else "the queue was empty")
                return None
            conn.execute("UPDATE jobs SET status = 'running', worker_id = ?, started_at = ? WHERE id = ?",
                         (self.id, _now(), row[0]))
            return _require_job(conn, self.path, row[0])

    def on_signal(self, signum, frame) -> None:
        """SIGTERM/SIGINT: stop after the current step (run interrupted); a second one: at once."""
        if self.stop_reason is not None:
            raise KeyboardInterrupt
        self.stop_reason = f"the worker received {signal.Signals(signum).name}"
        if self.trainer is not None:
            self.trainer.request_cancel()

    def attach(self, trainer) -> None:
        """``on_trainer`` hook: keep the trainer; a new run gets a step-0 checkpoint, so that
        it can be resumed even if it dies before its first periodic one; a stop asked for
        during setup applies now."""
        self.trainer = trainer
        if self.job.kind != "resume":  # (a resume job's trainer loads the run's checkpoint instead)
            trainer.save_checkpoint()
        self._poll()

    def on_step(self, step: int, metrics: dict) -> None:
        """Trainer callback after each step: record the run id, then stop if asked to."""
        if self.run_id is None:
            self.run_id = self.trainer.run_id
            with transaction(self.path, immediate=True) as conn:
                conn.execute("UPDATE jobs SET run_id = ? WHERE id = ?", (self.run_id, self.job.id))
        self._poll()

    def _poll(self) -> None:
        """Cancel requested, owner gone, or a signal: end the run after the current step."""
        self._check_owner()
        if self.stop_reason is not None or self._cancel_requested():
            self.trainer.request_cancel()

    def _check_owner(self) -> None:
        pid, start = self.owner
        if self.stop_reason is None and pid is not None and not _alive(pid, start):
            self.stop_reason = f"the app process {pid} that started this worker is gone"

    def _cancel_requested(self) -> bool:
        with transaction(self.path) as conn:
            return bool(conn.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (self.job.id,)).fetchone()[0])

    def _run(self, job: Job) -> None:
        """Train ``job`` and give it its final status (and its run, when stopped for the worker's sake)."""
        self.job, self.trainer, self.run_id = job, None, job.run_id
        print(f"{_now()} job {job.id} ({job.kind}{f', run {job.run_id}' if job.run_id else ''}): started", flush=True)
        try:
            result = self._train(job)
        except KeyboardInterrupt:  # the trainer, if it had started, marked the run interrupted
            self._end("interrupted", "stopped at once by a second signal", getattr(self.trainer, "run_id", None),
                      end_run=True)
            raise
        except Exception as exc:  # the trainer marked the run failed, unless it failed in the evaluation
            traceback.print_exc()
            self._end("failed", f"{type(exc).__name__}: {exc}", getattr(self.trainer, "run_id", None),
                      end_run=True)
            return
        if result.status == "finished":
            self._end("done", None, result.run_id)
        elif result.status == "diverged":  # the run is marked diverged (with its step and reason) already
            error = RunStore(self.path).progress([result.run_id]).get(result.run_id, {}).get("error")
            self._end("failed", f"run {result.run_id} {error or 'diverged'}", result.run_id)
        elif self._cancel_requested():
            self._end("cancelled", f"cancelled after step {result.step}", result.run_id)
        else:  # stopped for the worker's sake: the trainer ended the run cancelled
            reason = f"{self.stop_reason}; stopped after step {result.step}, resume the run to continue"
            self._end("interrupted", reason, result.run_id, end_run=True)

    def _train(self, job: Job):
        """Train (or resume) the job's run through its task; its TrainResult."""
        store, hooks = RunStore(self.path), {"callbacks": (self.on_step,), "on_trainer": self.attach}
        if job.kind == "resume":
            task = task_of_run(store, job.run_id, "resumed")
            setup = task.run_setup(store.get_run(job.run_id).config)
        else:
            task = task_of_job_kind(job.kind)
            setup = task.setup_from(job.setup)
        if not task.reusable(self.loaded, setup):
            self.loaded = None  # free the last job's model and judge before loading the next: never two at once
            self.loaded = task.load(setup, note=self.on_note)
        task.prepare(setup, progress=self.on_progress)
        if job.kind == "resume":
            return task.resume(store, job.run_id, loaded=self.loaded, **hooks)[0]
        return task.train(train_config_from(job.config), setup, store, job.checkpoint_dir, loaded=self.loaded,
                          **hooks)[0]

    def on_note(self, text: str) -> None:
        """``note`` of a task's :meth:`~mopo_core.training.tasks.TrainingTask.load`: to the log and
        the job's progress text (no fraction: loading is not measured)."""
        print(f"{_now()} job {self.job.id}: {text}", flush=True)
        record_progress(self.path, self.job.id, None, text)

    def on_progress(self, fraction: float, text: str) -> None:
        """``progress`` of a task's :meth:`~mopo_core.training.tasks.TrainingTask.prepare` (the text
        task's reference fit): to the log (a line per tenth) and the job's row."""
        from mopo_core.training.reference_cache import print_progress  # (torch: the worker only)

        print_progress(fraction, text)
        record_progress(self.path, self.job.id, fraction, text)

    def _end(self, status: str, error: str | None, run_id: int | None, end_run: bool = False) -> None:
        """End the job; with ``end_run``, its run too (unless it had finished with its point)."""
        with transaction(self.path, immediate=True) as conn:
            if end_run and _run_status(conn, run_id) not in (None, "finished"):
                RunStore.set_status_in(conn, run_id, status, error)
            _end_job(conn, self.job.id, status, error, run_id)
        print(f"{_now()} job {self.job.id}: {status}{f' ({error})' if error else ''}", flush=True)


def run_worker(store_path: str | os.PathLike) -> int:
    """The worker process's main: register, serve the queue, return the exit status
    (:data:`EXIT_ANOTHER_WORKER` when another live worker serves the store)."""
    path = _prepare(store_path)
    try:
        worker = _Worker(path, *_register_worker(path))
    except WorkerAlreadyRunning as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ANOTHER_WORKER
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, worker.on_signal)
    return worker.serve()
