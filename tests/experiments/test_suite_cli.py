"""The suite runner and the command line, end to end on small settings."""
import json

import numpy as np
import pandas as pd
import pytest

from mopo_core.cli.main import main
from mopo_core.runs import RunStore
from mopo_core.experiments.suite import METHODS, SuiteConfig, results_table, run_suite


@pytest.fixture()
def store_path(tmp_path, monkeypatch):
    path = tmp_path / "runs.sqlite"
    monkeypatch.setenv("MOPO_STORE", str(path))
    return path


def test_suite_exact_mopo_meets_every_threshold_with_small_regret():
    config = SuiteConfig(structures=("bt_conflict", "three_objectives"), n_comparisons=None, tau=0.01, steps=300,
                         n_seeds=1, temperatures=("same_tau",))
    table = results_table(run_suite(config))
    assert set(table.method) == set(METHODS)
    mopo = table[table.method == "mopo_oracle"]
    assert (mopo.satisfaction == 1.0).all()
    assert (mopo.mean_regret < 5e-3).all()
    # with exact preferences, mopo (on the "estimated" = true preferences) equals the oracle
    np.testing.assert_allclose(table[table.method == "mopo"].hypervolume.values, mopo.hypervolume.values)


def test_suite_with_data_differs_from_oracle():
    config = SuiteConfig(structures=("cyclic",), methods=("mopo", "mopo_oracle"), n_comparisons=20, n_seeds=1)
    table = results_table(run_suite(config)).set_index("method")
    assert table.loc["mopo", "hypervolume"] != table.loc["mopo_oracle", "hypervolume"]


def test_suite_config_rejects_unknown_names():
    with pytest.raises(ValueError, match="methods: unknown"):
        run_suite(SuiteConfig(methods=("nope",)))
    with pytest.raises(ValueError, match="structures: unknown"):
        run_suite(SuiteConfig(structures=("nope",)))
    with pytest.raises(ValueError, match="temperatures: need a non-empty subset"):
        run_suite(SuiteConfig(temperatures=("hot",)))
    with pytest.raises(ValueError, match="n_seeds: must be >= 1"):
        run_suite(SuiteConfig(n_seeds=0))


def test_cli_solve_json_and_run_recorded(store_path, capsys):
    assert main(["solve", "--structure", "bt_conflict", "--threshold", "0.6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["feasible"] is True and abs(out["values"][1] - 0.6) < 1e-8
    run = RunStore(store_path).get_run(out["run_id"])
    assert run.kind == "solve" and run.status == "finished" and len(run.points) == 1


def test_cli_sweep_runs_and_export(store_path, tmp_path, capsys):
    assert main(["sweep", "--n-thresholds", "7", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["points"]) == 7 and all(p["feasible"] for p in out["points"])
    v1 = [p["V1"] for p in out["points"]]
    assert v1 == sorted(v1)
    assert main(["runs", "list"]) == 0
    assert main(["runs", "export", str(out["run_id"]), str(tmp_path / "sweep.csv")]) == 0
    assert (tmp_path / "sweep.csv").read_text().count("\n") == 8


def test_cli_suite_writes_csv_and_markdown(store_path, tmp_path, capsys):
    out_dir = tmp_path / "suite"
    args = ["suite", "--out", str(out_dir), "--structures", "bt_aligned", "--methods", "mopo", "dpo_primary",
            "--steps", "100", "--n-seeds", "2"]
    assert main(args) == 0
    markdown = (out_dir / "suite.md").read_text()
    assert "## satisfaction" in markdown and "| dpo_primary (same KL) |" in markdown and " ± " in markdown
    assert "### mopo - baseline: hv_ratio" in markdown
    table = pd.read_csv(out_dir / "suite.csv")
    assert sorted(set(table.seed)) == [0, 1] and set(table.temperature) == {"same_tau", "same_kl"}
    runs = RunStore(store_path).list_runs(kind="suite")
    assert runs.shape[0] == 2  # one per structure and seed
    assert set(json.loads((out_dir / "dominance.json").read_text())["bt_aligned"]) == {
        "mopo", "dpo_primary", "dpo_primary (same KL)"}


def test_cli_bad_input_names_the_problem(store_path, tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((2, 3, 3), 0.7))
    assert main(["solve", "--preferences", str(bad), "--threshold", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "bad.npy" in err and "P + P^T != 1" in err
    assert main(["solve", "--threshold", "0.5", "--tau", "-1"]) == 2
    assert "tau: must be > 0" in capsys.readouterr().err


def test_cli_reads_a_json_preferences_file(store_path, tmp_path, capsys):
    prefs = np.full((2, 3, 3), 0.5)
    prefs[:, 0, 1], prefs[:, 1, 0] = [0.9, 0.2], [0.1, 0.8]
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps({"preferences": prefs.tolist()}))
    assert main(["solve", "--preferences", str(path), "--threshold", "0.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["feasible"] is True


def test_cli_marks_a_dead_running_run_interrupted(store_path, capsys):
    store = RunStore(store_path)
    run_id = store.create_run("train", {"note": "its process was killed"})
    assert main(["runs", "mark-interrupted", str(run_id)]) == 0
    assert store.get_status(run_id) == "interrupted"
    assert main(["runs", "mark-interrupted", str(run_id)]) == 2
    assert "only 'running' runs" in capsys.readouterr().err
    assert main(["runs", "mark-interrupted", "999"]) == 2


def test_cli_errors_are_one_line_without_quotes_or_traceback(store_path, tmp_path, capsys):
    assert main(["runs", "show", "999"]) == 2
    assert capsys.readouterr().err == f"error: run 999 not found in the run store {store_path}\n"
    rows = [{"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 5, "safer_response_id": 0},
            {"prompt": "q", "response_0": "a", "response_1": "a", "better_response_id": 0, "safer_response_id": 0}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["data", "inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {bad}: 2 error(s) in 2 row(s): bad.jsonl: row 1: ")
    assert "; bad.jsonl: row 2: field 'response_1': identical to response_0" in err
