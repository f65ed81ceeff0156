"""Threshold preview from a preference file (mopo_core/data/preview.py, issue 14 item 6): the
preview equals solve_tabular on win-rates computed here, independently, from the file's labels;
feasibility at the attainable edge; the ``preview`` command's table and errors; the PKU file in
``../shared/data`` (skipped when absent)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mopo_core.cli.main import main
from mopo_core.data.preview import threshold_preview
from mopo_core.tabular.solver import INFEASIBLE_BACKOFF, solve_tabular

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
OBJECTIVES = ("helpful", "harmless")

#: Three prompts: p1 has three responses, a repeated pair (a/b swapped), a tie and a soft label;
#: p2 one pair; p3 three responses of which one pair is never compared.
RECORDS = [
    {"prompt": "p1", "response_a": "x", "response_b": "y", "labels": {"helpful": 1.0, "harmless": 0.0}},
    {"prompt": "p1", "response_a": "y", "response_b": "z", "labels": {"helpful": 0.5, "harmless": 1.0}},
    {"prompt": "p2", "response_a": "u", "response_b": "v", "labels": {"helpful": 0.0, "harmless": 1.0}},
    {"prompt": "p1", "response_a": "y", "response_b": "x", "labels": {"helpful": 0.0, "harmless": 0.7}},
    {"prompt": "p3", "response_a": "r", "response_b": "s", "labels": {"helpful": 1.0, "harmless": 1.0}},
    {"prompt": "p1", "response_a": "x", "response_b": "z", "labels": {"helpful": 1.0, "harmless": 0.0}},
    {"prompt": "p3", "response_a": "t", "response_b": "s", "labels": {"helpful": 0.0, "harmless": 1.0}},
]


def _write(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _independent(records, prior: float):
    """Preferences (K, M, N, N), reference and behaviour (M, N) and win-rates (K, M, N), built
    from the labels with plain loops (the rules stated in preview.py's docstring)."""
    prompts = list(dict.fromkeys(r["prompt"] for r in records))
    responses = {p: [] for p in prompts}
    for r in records:
        for text in (r["response_a"], r["response_b"]):
            if text not in responses[r["prompt"]]:
                responses[r["prompt"]].append(text)
    n = max(len(v) for v in responses.values())
    k = len(OBJECTIVES)
    prefs = np.full((k, len(prompts), n, n), 0.5)
    reference = np.zeros((len(prompts), n))
    behaviour = np.zeros((len(prompts), n))
    rates = np.zeros((k, len(prompts), n))
    for m, p in enumerate(prompts):
        texts = responses[p]
        rows = [r for r in records if r["prompt"] == p]
        for i, yi in enumerate(texts):
            reference[m, i] = 1.0 / len(texts)
            behaviour[m, i] = sum((r["response_a"] == yi) + (r["response_b"] == yi) for r in rows) / (2 * len(rows))
            for j, yj in enumerate(texts):
                if i == j:
                    continue
                for kk, name in enumerate(OBJECTIVES):
                    wins = sum(r["labels"][name] if r["response_a"] == yi else 1 - r["labels"][name]
                               for r in rows if {r["response_a"], r["response_b"]} == {yi, yj})
                    count = sum({r["response_a"], r["response_b"]} == {yi, yj} for r in rows)
                    prefs[kk, m, i, j] = (wins + prior / 2) / (count + prior) if count + prior > 0 else 0.5
        for kk in range(k):
            for i in range(len(texts)):
                rates[kk, m, i] = sum(behaviour[m, j] * prefs[kk, m, i, j] for j in range(len(texts)))
    return prefs, reference, behaviour, rates


@pytest.mark.parametrize("prior", [1.0, 0.0, 4.0])
def test_the_preview_equals_solve_tabular_on_the_labels_win_rates(tmp_path, prior):
    path = _write(tmp_path / "small.jsonl", RECORDS)
    prefs, reference, behaviour, rates = _independent(RECORDS, prior)
    tau = 0.08
    weights = np.full(3, 1 / 3)
    maximum = float(np.mean([rates[1, m][reference[m] > 0].max() for m in range(3)]))
    grid = [0.3, 0.5, 0.55, maximum - 0.05, maximum - 2e-3, maximum, maximum + 0.1]
    result = threshold_preview(path, thresholds=grid, tau=tau, prior=prior)
    support = np.broadcast_to(reference > 0, rates.shape)  # padding (p2 has two responses) takes no part
    np.testing.assert_allclose(result.built.problem.rates[support], rates[support], atol=1e-12)
    np.testing.assert_allclose(result.attainable_max, [maximum], atol=1e-12)
    np.testing.assert_allclose(result.reference_values, np.einsum("m,mn,kmn->k", weights, reference, rates), atol=1e-12)
    assert list(result.table.columns) == ["b1", "feasible", "lambda1", "V0", "V1", "KL"]
    for row, b in zip(result.table.itertuples(index=False), grid):
        sol = solve_tabular(prefs, [b], tau, reference=reference, behaviour=behaviour, prompt_weights=weights)
        assert row.b1 == b
        assert row.feasible == sol.feasible
        np.testing.assert_allclose([row.lambda1], sol.multipliers, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose([row.V0, row.V1], sol.values, atol=1e-9)
        np.testing.assert_allclose(row.KL, sol.kl, atol=1e-9)
    assert result.n_pairs == 7 and result.n_prompts == 3 and result.n_responses == 8
    assert result.max_responses_per_prompt == 3


def test_feasibility_flags_at_the_attainable_edge(tmp_path):
    path = _write(tmp_path / "small.jsonl", RECORDS)
    result = threshold_preview(path, thresholds=[0.0], tau=0.08)
    top, ref = float(result.attainable_max[0]), float(result.reference_values[1])
    grid = [ref, top - 1e-4, top, top + 1e-3]
    table = threshold_preview(path, thresholds=grid, tau=0.08).table
    assert table["feasible"].tolist() == [True, True, False, False]
    # the feasible rows meet their thresholds, up to the attainable edge
    assert np.all(table["V1"].iloc[:2].to_numpy() >= np.array(grid[:2]) - 1e-8)
    # at and past the edge: the nearest attainable thresholds are enforced, never NaN
    assert np.all(np.isfinite(table[["lambda1", "V0", "V1", "KL"]].to_numpy()))
    np.testing.assert_allclose(table["V1"].iloc[2], top - INFEASIBLE_BACKOFF, atol=1e-6)


def test_the_default_grid_runs_from_pi_ref_to_the_attainable_max(tmp_path):
    result = threshold_preview(_write(tmp_path / "small.jsonl", RECORDS), tau=0.08, n_thresholds=6)
    b = result.table["b1"].to_numpy()
    assert b.size == 6
    assert b[0] == pytest.approx(result.reference_values[1])
    assert b[-1] == pytest.approx(result.attainable_max[0])
    assert b[1] == pytest.approx(max(result.reference_values[1], result.unconstrained_values[1]))
    assert result.table["feasible"].tolist() == [True] * 5 + [False]
    assert np.all(np.diff(result.table["lambda1"].to_numpy()[1:-1]) >= -1e-9)  # stricter b, larger lambda


def test_one_hard_label_with_no_prior_is_a_certain_preference(tmp_path):
    records = [{"prompt": "p", "response_a": "a", "response_b": "b", "labels": {"helpful": 1.0, "harmless": 0.0}}]
    result = threshold_preview(_write(tmp_path / "one.jsonl", records), thresholds=[0.5], prior=0.0)
    np.testing.assert_allclose(result.built.problem.preferences[:, 0, 0, 1], [1.0, 0.0])
    np.testing.assert_allclose(result.built.problem.rates[:, 0], [[0.75, 0.25], [0.25, 0.75]])
    smoothed = threshold_preview(_write(tmp_path / "one.jsonl", records), thresholds=[0.5], prior=1.0)
    np.testing.assert_allclose(smoothed.built.problem.preferences[:, 0, 0, 1], [0.75, 0.25])


def test_records_and_files_give_the_same_preview(tmp_path):
    from_file = threshold_preview(_write(tmp_path / "small.jsonl", RECORDS), thresholds=[0.5, 0.6])
    from_records = threshold_preview(RECORDS, thresholds=[0.5, 0.6])
    np.testing.assert_allclose(from_file.table.drop(columns="feasible").to_numpy(),
                               from_records.table.drop(columns="feasible").to_numpy())


def test_three_objectives_take_rows_of_thresholds(tmp_path):
    records = [{**r, "labels": {**r["labels"], "honest": 1.0 - r["labels"]["helpful"]}} for r in RECORDS]
    result = threshold_preview(_write(tmp_path / "three.jsonl", records), thresholds=[0.4, 0.4, 0.5, 0.45], tau=0.1)
    assert result.table[["b1", "b2"]].to_numpy().tolist() == [[0.4, 0.4], [0.5, 0.45]]
    assert {"lambda1", "lambda2", "V0", "V1", "V2"} <= set(result.table.columns)
    with pytest.raises(ValueError, match=r"thresholds: .*rows of 2"):
        threshold_preview(_write(tmp_path / "three.jsonl", records), thresholds=[0.4, 0.4, 0.5])


def test_cli_prints_the_table(tmp_path, capsys):
    path = _write(tmp_path / "small.jsonl", RECORDS)
    assert main(["preview", str(path), "--tau", "0.08", "--thresholds", "0.5", "0.55", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "b1  feasible  lambda1" in out and "KL" in out
    assert "attainable max   : V1 = " in out and "reference pi_ref : V0 = " in out
    assert "2 of 3 thresholds attainable" in out
    assert main(["preview", str(path), "--json", "--n-thresholds", "4"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["objectives"] == list(OBJECTIVES) and len(payload["rows"]) == 4
    assert payload["rows"][-1]["feasible"] is False


def test_bad_file_is_a_clear_error_naming_file_and_row(tmp_path, capsys):
    bad = [*RECORDS[:2], {**RECORDS[2], "labels": {"helpful": 1.5, "harmless": 0.0}}]
    path = _write(tmp_path / "bad.jsonl", bad)
    with pytest.raises(ValueError, match=r"bad\.jsonl: row 3: field 'labels\.helpful'"):
        threshold_preview(path)
    assert main(["preview", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.jsonl" in err and "row 3" in err and "labels.helpful" in err
    single = _write(tmp_path / "single.jsonl", [{"prompt": "p", "response_a": "a", "response_b": "b",
                                                 "labels": {"helpful": 1.0}}])
    assert main(["preview", str(single)]) == 2
    assert "single.jsonl: one objective (helpful)" in capsys.readouterr().err
    assert main(["preview", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    for args, field in ((["--tau", "0"], "tau"), (["--prior", "-1"], "prior")):
        _write(tmp_path / "small.jsonl", RECORDS)
        assert main(["preview", str(tmp_path / "small.jsonl"), *args]) == 2
        assert f"error: {field}" in capsys.readouterr().err


def test_the_pku_file_reports_its_attainable_range(capsys):
    path = SHARED_DATA / "pku_saferlhf_alpaca7b.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared data folder is not part of a clone)")
    result = threshold_preview(path, tau=0.08)
    assert result.objectives == ("helpfulness", "harmlessness")
    assert result.n_pairs == 1633 and result.n_prompts == 1614
    top, ref = float(result.attainable_max[0]), float(result.reference_values[1])
    assert 0.5 < top < 1.0 and ref == pytest.approx(0.5, abs=1e-3)
    table = result.table
    assert table["feasible"].iloc[:-1].all() and not table["feasible"].iloc[-1]
    assert np.all(np.isfinite(table[["lambda1", "V0", "V1", "KL"]].to_numpy()))
    print(f"PKU alpaca7b at tau 0.08: harmlessness attainable from pi_ref {ref:.4f} up to (not including) {top:.4f}; "
          f"lambda at the last attainable row {table['lambda1'].iloc[-2]:.3f}")


def test_a_problem_too_large_to_hold_is_refused_before_allocating(tmp_path, monkeypatch):
    import mopo_core.validation as validation

    monkeypatch.setattr(validation, "MAX_ARRAY_BYTES", 100)
    with pytest.raises(ValueError, match=r"small\.jsonl: preferences .* over the 100 bytes limit"):
        threshold_preview(_write(tmp_path / "small.jsonl", RECORDS))
