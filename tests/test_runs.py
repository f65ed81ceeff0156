"""The SQLite run store: writing, reading, statuses, export and sharing one file."""
from __future__ import annotations

import json
import math
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mopo_core.runs import SCHEMA_VERSION, RunStore, default_store_path


@pytest.fixture
def store(tmp_path, monkeypatch) -> RunStore:
    monkeypatch.setenv("MOPO_STORE", str(tmp_path / "nested" / "runs.sqlite"))
    return RunStore()


def fill(store: RunStore) -> int:
    run_id = store.create_run("sweep", {"tau": np.float64(0.1), "thresholds": np.array([0.5, 0.6]), "seed": np.int64(3)}, name="demo")
    store.log_metrics(run_id, 0, {"loss": 1.5, "lambda": np.float32(0.25)})
    store.log_metrics(run_id, 1, {"loss": float("nan"), "lambda": 0.5})
    store.add_points(
        run_id,
        [
            {"label": "mopo", "params": {"threshold": [0.5]}, "values": [0.7, 0.5], "extra": {"feasible": np.bool_(True)}},
            {"label": "mopo", "params": {"threshold": np.array([0.6])}, "values": np.array([0.6, np.nan])},
        ],
    )
    store.add_points(run_id, [{"label": "dpo", "params": {"weight": 0.3}, "values": (0.8, 0.4)}])
    return run_id


def test_store_path_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("MOPO_STORE", str(tmp_path / "x.sqlite"))
    assert default_store_path() == tmp_path / "x.sqlite"
    monkeypatch.delenv("MOPO_STORE")
    path = default_store_path()
    assert path.name == "runs.sqlite" and "mopo-studio" in str(path.parent)


def test_schema_wal_and_parent_dirs(store):
    assert store.path.exists() and store.path.parent.name == "nested"
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs", "metrics", "points"} <= tables
    RunStore(store.path)  # reopening an existing store is fine


def test_create_log_points_get(store):
    run_id = fill(store)
    run = store.get_run(run_id)
    assert (run.id, run.kind, run.name, run.status, run.error) == (run_id, "sweep", "demo", "running", None)
    assert run.config == {"tau": 0.1, "thresholds": [0.5, 0.6], "seed": 3}
    assert run.started_at is not None and run.finished_at is None
    assert run.created_at.endswith("+00:00")

    m = run.metrics
    assert list(m.columns) == ["step", "name", "value"] and len(m) == 4
    loss = m[m.name == "loss"].set_index("step")["value"]
    assert loss[0] == 1.5 and math.isnan(loss[1])

    p = run.points
    assert list(p.idx) == [0, 1, 2] and list(p.label) == ["mopo", "mopo", "dpo"]
    assert p.params[1] == {"threshold": [0.6]} and p.extra[0] == {"feasible": True} and p.extra[2] is None
    assert p["values"][1] == [0.6, None]
    np.testing.assert_allclose(p[["v0", "v1"]].to_numpy(), [[0.7, 0.5], [0.6, np.nan], [0.8, 0.4]])


def test_status_and_list(store):
    a = fill(store)
    b = store.create_run("solve", {}, status="queued")
    assert store.get_run(b).started_at is None
    store.set_status(b, "running")
    assert store.get_run(b).started_at is not None
    store.set_status(a, "finished")
    assert store.get_run(a).finished_at is not None

    runs = store.list_runs()
    assert list(runs.columns) == ["id", "kind", "name", "status", "created_at", "finished_at", "n_points", "tags",
                                  "hidden"]
    assert list(runs.id) == [a, b] and list(runs.n_points) == [3, 0]
    assert list(runs.tags) == [[], []] and list(runs.hidden) == [False, False]
    assert list(store.list_runs(kind="solve").id) == [b]
    assert list(store.list_runs(status="finished").id) == [a]
    assert store.list_runs(kind="train").empty
    with pytest.raises(ValueError, match="status"):
        store.set_status(a, "done")


def test_progress_in_one_query_and_on_a_callers_connection(store):
    a = fill(store)
    b = store.create_run("train", {"steps": 10, "method": "mopo", "checkpoint_dir": "/tmp/job-1"}, status="queued")
    c = store.create_run("train", {"steps": 5, "checkpoint_dir": "/tmp/job-1"})
    assert store.progress([]) == {} and store.progress([None]) == {}
    progress = store.progress([a, b, c, None, 999])
    assert set(progress) == {a, b, c}  # an unknown id is left out
    assert progress[a] == {"status": "running", "error": None, "config": store.get_run(a).config, "step": 1,
                           "n_points": 3}
    assert progress[b] == {"status": "queued", "error": None,
                           "config": {"steps": 10, "method": "mopo", "checkpoint_dir": "/tmp/job-1"}, "step": None,
                           "n_points": 0}

    with sqlite3.connect(store.path) as conn:  # the job queue's transaction, on its own connection
        assert RunStore.progress_in(conn, [b]) == {b: progress[b]}
        assert RunStore.latest_run_in(conn, "train", "checkpoint_dir", "/tmp/job-1") == c
        assert RunStore.latest_run_in(conn, "train", "checkpoint_dir", "/tmp/job-2") is None
        assert RunStore.latest_run_in(conn, "sweep", "checkpoint_dir", "/tmp/job-1") is None
        RunStore.set_status_in(conn, c, "interrupted", "the app went away")
        with pytest.raises(ValueError, match="status"):
            RunStore.set_status_in(conn, c, "done")
    ended = store.get_run(c)
    assert (ended.status, ended.error) == ("interrupted", "the app went away") and ended.finished_at is not None


def test_unknown_run_and_bad_points(store):
    for call in (lambda: store.get_run(99), lambda: store.log_metrics(99, 0, {"x": 1.0}), lambda: store.delete_run(99)):
        with pytest.raises(KeyError, match="run 99"):
            call()
    run_id = store.create_run("solve", {})
    with pytest.raises(ValueError, match=r"points\[0\]: missing key"):
        store.add_points(run_id, [{"label": "x", "values": [1.0]}])
    store.add_points(run_id, [{"label": "x", "params": {}, "values": [1.0, 2.0]}])
    with pytest.raises(ValueError, match="same number of values"):
        store.add_points(run_id, [{"label": "x", "params": {}, "values": [1.0]}])
    with pytest.raises(ValueError, match=r"config\['b'\]: infinite"):
        store.create_run("solve", {"b": -np.inf})


def test_delete_cascades(store):
    run_id = fill(store)
    store.delete_run(run_id)
    assert store.list_runs().empty
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM points").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 0


def test_export_csv_round_trip(store, tmp_path):
    run_id = fill(store)
    written = store.export_run(run_id, tmp_path / "out" / "run.csv")
    assert [p.name for p in written] == ["run.csv", "run_metrics.csv"]
    points = pd.read_csv(written[0])
    original = store.get_run(run_id)
    assert list(points.label) == list(original.points.label)
    np.testing.assert_allclose(points[["v0", "v1"]].to_numpy(), original.points[["v0", "v1"]].to_numpy())
    assert [json.loads(s) for s in points.params] == list(original.points.params)
    assert json.loads(points.config[0]) == original.config
    metrics = pd.read_csv(written[1])
    pd.testing.assert_frame_equal(metrics, original.metrics)


def test_export_json_round_trip(store, tmp_path):
    run_id = fill(store)
    (path,) = store.export_run(run_id, tmp_path / "run.json")
    doc = json.loads(path.read_text())
    original = store.get_run(run_id)
    assert doc["run"]["id"] == run_id and doc["run"]["status"] == "running"
    assert doc["config"] == original.config
    assert [p["values"] for p in doc["points"]] == [[0.7, 0.5], [0.6, None], [0.8, 0.4]]
    assert doc["metrics"][1] == {"step": 1, "name": "lambda", "value": 0.5}
    assert any(m["value"] is None for m in doc["metrics"])
    with pytest.raises(ValueError, match="fmt"):
        store.export_run(run_id, tmp_path / "run.xlsx")
    (forced,) = store.export_run(run_id, tmp_path / "run.txt", fmt="json")
    assert json.loads(forced.read_text()) == doc


def test_record_sets_terminal_status(store):
    with store.record("solve", {"tau": 0.1}) as ok:
        pass
    assert store.get_run(ok).status == "finished"

    with pytest.raises(RuntimeError, match="boom"):
        with store.record("solve", {}) as bad:
            raise RuntimeError("boom")
    run = store.get_run(bad)
    assert run.status == "failed" and run.error == "RuntimeError: boom" and run.finished_at is not None

    with store.record("train", {}) as cancelled:
        store.set_status(cancelled, "cancelled")
    assert store.get_run(cancelled).status == "cancelled"


def test_two_stores_and_threads_share_one_file(tmp_path):
    path = tmp_path / "shared.sqlite"
    writer, reader = RunStore(path), RunStore(Path(str(path)))
    run_id = writer.create_run("train", {"lr": 1e-3})
    assert list(reader.list_runs().id) == [run_id]
    reader.set_status(run_id, "cancelled")
    assert writer.get_run(run_id).status == "cancelled"

    def log(worker: int) -> None:
        for step in range(20):
            RunStore(path).log_metrics(run_id, step, {f"w{worker}": float(step)})

    threads = [threading.Thread(target=log, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reader.get_run(run_id).metrics) == 80


def test_a_file_that_is_not_a_run_store_is_named(tmp_path):
    from mopo_core.runs import StoreError

    text = tmp_path / "notes.txt"
    text.write_text("not a database")
    with pytest.raises(StoreError, match=f"{text} is not a readable SQLite run store: it does not start with"):
        RunStore(text)
    with pytest.raises(ValueError, match="it is a folder"):
        RunStore(tmp_path)
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    assert RunStore(empty).list_runs().empty  # an empty file is a new store


def test_a_store_damaged_after_opening_is_named_on_the_next_operation(tmp_path):
    from mopo_core.runs import StoreError

    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    store.create_run("solve", {"note": "x" * 5000})
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(StoreError, match=f"{path} is not a readable SQLite run store: database disk image"):
        store.list_runs()


def test_a_newer_schema_is_refused_with_a_value_error(tmp_path):
    path = tmp_path / "runs.sqlite"
    RunStore(path)
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ValueError, match=f"run store {path}: schema version {SCHEMA_VERSION + 1} is newer"):
        RunStore(path)


def test_a_store_written_before_the_diverged_status_is_widened_keeping_every_row(tmp_path):
    """A runs table whose CHECK lists the statuses before ``diverged`` existed (issue 14) is rebuilt
    on opening: its runs, metrics and points stay, a run can become diverged, deletes still cascade."""
    path = tmp_path / "old.sqlite"
    old_statuses = ("queued", "running", "finished", "failed", "cancelled", "interrupted")
    conn = sqlite3.connect(path)
    conn.executescript(f"""
        CREATE TABLE runs (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, name TEXT, config TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN {old_statuses!r}), error TEXT, created_at TEXT NOT NULL,
            started_at TEXT, finished_at TEXT);
        CREATE TABLE metrics (run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE, step INTEGER NOT NULL,
            name TEXT NOT NULL, value REAL);
        CREATE TABLE points (run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE, idx INTEGER NOT NULL,
            label TEXT NOT NULL, params TEXT NOT NULL, objective_values TEXT NOT NULL, extra TEXT,
            PRIMARY KEY (run_id, idx));
        INSERT INTO runs VALUES (7, 'train', 'old', '{{"seed": 1}}', 'finished', NULL, '2026-01-01', '2026-01-01',
            '2026-01-02');
        INSERT INTO metrics VALUES (7, 1, 'loss', 2.5);
        INSERT INTO points VALUES (7, 0, 'mopo', '{{}}', '[0.6, 0.4]', NULL);
        PRAGMA user_version = 1;
    """)
    conn.commit()
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE runs SET status = 'diverged' WHERE id = 7")
    conn.close()

    store = RunStore(path)
    run = store.get_run(7)
    assert (run.name, run.config, run.status, run.finished_at) == ("old", {"seed": 1}, "finished", "2026-01-02")
    assert run.metrics.value.tolist() == [2.5] and run.points.v0.tolist() == [0.6]
    store.set_status(7, "diverged", "diverged at step 1: the loss is nan")
    assert store.get_run(7).status == "diverged" and store.get_run(7).error.startswith("diverged at step 1")
    RunStore(path)  # opening again: nothing left to widen
    assert len(store.get_run(7).metrics) == 1
    listed = store.list_runs()  # a store from before run marks: no tags, shown; it can be marked now
    assert listed.tags.tolist() == [[]] and listed.hidden.tolist() == [False]
    store.set_tags(7, "old, kept")
    assert store.list_runs().tags.tolist() == [["old", "kept"]]
    store.delete_run(7)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM points").fetchone() == (0,)


def test_rename_tag_hide_and_find_runs(store):
    a = fill(store)
    b = store.create_run("train", {"checkpoint_dir": "/tmp/ck", "seed": 1})
    store.rename_run(a, "  my sweep ")
    store.rename_run(b, "   ")
    assert store.get_run(a).name == "my sweep" and store.get_run(b).name is None
    with pytest.raises(ValueError, match="name"):
        store.rename_run(a, 3)
    with pytest.raises(KeyError, match="999"):
        store.rename_run(999, "x")

    assert store.set_tags(a, " good, seed 0,, good ,") == ["good", "seed 0"]
    assert store.set_tags(b, ["x", "y, z"]) == ["x", "y", "z"]
    with pytest.raises(ValueError, match="tags"):
        store.set_tags(a, 3)
    store.set_hidden(a, True)
    listed = store.list_runs()
    assert listed.tags.tolist() == [["good", "seed 0"], ["x", "y", "z"]] and listed.hidden.tolist() == [True, False]
    store.set_tags(a, "")  # tags and the hidden mark are kept apart
    store.set_hidden(b, False)
    listed = store.list_runs()
    assert listed.tags.tolist() == [[], ["x", "y", "z"]] and listed.hidden.tolist() == [True, False]

    assert store.runs_with("checkpoint_dir", "/tmp/ck") == [b] and store.runs_with("seed", 1) == [b]
    assert store.runs_with("checkpoint_dir", "/elsewhere") == []
    store.delete_run(b)  # its marks go with it
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT run_id FROM run_marks").fetchall() == [(a,)]


def test_get_runs_reads_the_same_runs_as_get_run_in_one_go(tmp_path):
    """The batched read (the Compare page's) gives each run exactly as get_run does: config,
    status, metric series and points (values expanded, NaN kept), in the order asked."""
    store = RunStore(tmp_path / "runs.sqlite")
    a = store.create_run("sweep", {"structure": "bt_conflict", "seed": 0}, name="a")
    store.add_points(a, [{"label": "mopo", "params": {"threshold": 0.6}, "values": [0.7, float("nan")],
                          "extra": {"feasible": True, "policy": [[0.5, 0.5]]}},
                         {"label": "mopo", "params": {"threshold": 0.7}, "values": [0.6, 0.8]}])
    b = store.create_run("train", {"task": "text", "method": "mopo"})
    for step in range(3):
        store.log_metrics(b, step, {"loss": 1.0 / (step + 1), "lambda_1": float("nan") if step == 1 else 0.1})
    store.set_status(b, "finished")
    c = store.create_run("suite", {"methods": ["dpo"]})  # no points, no metrics
    store.add_points(b, [{"label": "mopo", "params": {}, "values": [0.5, 0.6, 0.7]}])

    got = store.get_runs([c, a, b, a])
    assert [r.id for r in got] == [c, a, b, a]
    for run in got:
        expected = store.get_run(run.id)
        for field in ("id", "kind", "name", "config", "status", "error", "created_at", "started_at", "finished_at"):
            assert getattr(run, field) == getattr(expected, field)
        pd.testing.assert_frame_equal(run.metrics, expected.metrics)
        pd.testing.assert_frame_equal(run.points, expected.points)
    assert store.get_runs([]) == []
    with pytest.raises(KeyError, match="run 99 not found"):
        store.get_runs([a, 99])


def test_marker_changes_with_every_write_the_listing_shows_and_not_with_reads(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run("sweep", {"seed": 0})
    seen = [store.marker()]
    store.list_runs(), store.get_runs([run_id]), store.progress([run_id]), RunStore(store.path)
    assert store.marker() == seen[-1]  # reading (or opening the store again) changes nothing
    for write in (lambda: store.add_points(run_id, [{"label": "mopo", "params": {}, "values": [0.5, 0.6]}]),
                  lambda: store.log_metrics(run_id, 0, {"loss": 1.0}),
                  lambda: store.rename_run(run_id, "renamed"),
                  lambda: store.set_tags(run_id, "a, b"),
                  lambda: store.set_hidden(run_id, True),
                  lambda: store.set_status(run_id, "finished"),
                  lambda: store.create_run("train", {}),
                  lambda: store.delete_run(run_id)):
        write()
        assert store.marker() not in seen
        seen.append(store.marker())
