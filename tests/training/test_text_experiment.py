"""The text-task comparison: every method gets a point, the summary follows the Pareto layer.

Independent answers: each point's win-rates and standard errors recomputed here from the
evaluation's own samples with the task's ground-truth scorers (``synthetic.text_task.preference``),
the reference policy's win-rate against its own samples (0.5 by the oracle's symmetry), and the
summary's hypervolume, dominance and threshold counts computed by hand from the points."""
import numpy as np
import pytest

from mopo_core.runs import RunStore
from app.figures import comparison_figure
from mopo_core.training import text_comparison
from mopo_core.training.text_comparison import ComparisonSettings, run_comparison
from mopo_core.training.text_task import TextTaskSetup
from synthetic.text_task import preference


def _win_rates_by_hand(samples, objectives, temperature):
    """(win-rates (K,), prompt-level standard errors (K,)) of "policy" against "reference" samples:
    per prompt the mean of P_k(a beats b) over all pairs, then the mean and spread over prompts."""
    per_prompt = np.array([[np.mean([preference(prompt, a, b, k, temperature) for a in s["policy"]
                                     for b in s["reference"]]) for k in objectives] for prompt, s in samples.items()])
    return per_prompt.mean(axis=0), per_prompt.std(axis=0, ddof=1) / np.sqrt(len(per_prompt))


def _staircase_hv(points, ref):
    """Area dominated by 2-D points (maximised) above ``ref``: a plain sweep, no library."""
    pts = np.asarray([p for p in points if p[0] > ref[0] and p[1] > ref[1]])
    if len(pts) == 0:
        return 0.0
    area, best_y = 0.0, ref[1]
    for x, y in pts[np.argsort(-pts[:, 0])]:
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area


def _dominating(a, b, tol=1e-9):
    """How many points of ``a`` dominate at least one point of ``b`` (>= everywhere, > somewhere, up to tol)."""
    return sum(any(np.all(p >= q - tol) and np.any(p > q + tol) for q in b) for p in a)


@pytest.mark.slow
def test_comparison_runs_every_method_and_records_the_points(tmp_path, monkeypatch):
    evaluations = []  # (task, evaluation) per point, in the order of the points
    evaluate = text_comparison.evaluate_on_task

    def recording(task, policy, reference, *args, **kwargs):
        if not evaluations:  # the reference policy against itself, once
            evaluations.append((task, evaluate(task, reference, reference, *args, **kwargs)))
        evaluation = evaluate(task, policy, reference, *args, **kwargs)
        evaluations.append((task, evaluation))
        return evaluation

    monkeypatch.setattr(text_comparison, "evaluate_on_task", recording)
    store = RunStore(tmp_path / "runs.sqlite")
    settings = ComparisonSettings(steps=3, thresholds=(0.5, 0.6), secondary_weights=(0.5,), soup_points=3,
                                  batch_size=4, n_candidates=3)
    points, summary, ref = run_comparison(TextTaskSetup(n_prompts=20, sft_steps=20, eval_samples=2), settings, store)
    assert list(points.method.value_counts().sort_index().items()) == [
        ("dpo", 1), ("modpo", 1), ("mopo", 2), ("mopo_online", 2), ("rewarded_soups", 3), ("weighted_dpo", 1)]

    # The reference policy's own values: exactly 0.5 on each objective (P(a > b) + P(b > a) = 1).
    (task, itself), evaluations = evaluations[0], evaluations[1:]
    objectives = task.objectives
    reference_values, _ = _win_rates_by_hand(itself.samples, objectives, task.temperature)
    np.testing.assert_allclose(reference_values, 0.5, atol=1e-12)
    # Every point: its win-rates and standard errors from its own samples, against the same reference samples.
    assert len(evaluations) == len(points)
    for (_, evaluation), row in zip(evaluations, points.itertuples()):
        assert {p: s["reference"] for p, s in evaluation.samples.items()} == \
            {p: s["reference"] for p, s in itself.samples.items()}
        rates, stderr = _win_rates_by_hand(evaluation.samples, objectives, task.temperature)
        np.testing.assert_allclose([row.V0, row.V1], rates, atol=1e-12)
        np.testing.assert_allclose([row.stderr0, row.stderr1], stderr, atol=1e-12)
    values = points[["V0", "V1"]].to_numpy()
    assert np.all((values >= 0) & (values <= 1))
    # The hypervolume reference point: 0.01 below the worst point on each objective, as recorded.
    np.testing.assert_allclose(ref, values.min(axis=0) - 0.01, atol=1e-15)

    soups = points[points.method == "rewarded_soups"]
    dpo = points[points.method == "dpo"]
    np.testing.assert_allclose(soups.iloc[0][["V0", "V1"]].to_numpy(float), dpo.iloc[0][["V0", "V1"]].to_numpy(float))

    # The summary, by hand from the points.
    table = summary.set_index("method")
    sets = {m: g[["V0", "V1"]].to_numpy() for m, g in points.groupby("method")}
    for method, pts in sets.items():
        assert table.loc[method, "hypervolume"] == pytest.approx(_staircase_hv(pts, ref), rel=1e-12, abs=1e-15)
        others = [v for m, v in sets.items() if m != method]
        assert table.loc[method, "dominates_others"] == sum(_dominating(pts, v) for v in others)
        assert table.loc[method, "dominated_by_others"] == sum(_dominating(v, pts) for v in others)
    for method in ("mopo", "mopo_online"):
        rows = points[points.method == method]
        b = np.array([float(p.removeprefix("b=")) for p in rows.parameter])
        assert sorted(b) == sorted(settings.thresholds)
        v1, se1 = rows.V1.to_numpy(), rows.stderr1.to_numpy()
        assert table.loc[method, "thresholds_met"] == int(np.sum(v1 >= b))
        assert table.loc[method, "thresholds_met_within_1.96se"] == int(np.sum(v1 >= b - 1.96 * se1))

    fig = comparison_figure(points, ref, settings.thresholds)
    assert "maximised" in fig.layout.title.text and len(fig.data) == 7  # 6 methods + the reference point
    kinds = store.list_runs().kind.value_counts()
    # 2 MOPO offline, 2 online, MODPO, weighted DPO and the two DPO experts (DPO, MODPO's margin, the soups)
    assert kinds["comparison"] == 1 and kinds["train"] == 8
    (run_id,) = store.list_runs().query("kind == 'comparison'").id
    run = store.get_run(run_id)
    np.testing.assert_allclose(run.config["reference_point"], ref)
    np.testing.assert_allclose(run.points[["v0", "v1"]].to_numpy(), values)
    assert list(run.points.label) == list(points.method)


def test_the_command_lines_output_is_drawn_by_app_figures(tmp_path):
    """compare-text writes points.csv and comparison.json; `python -m app.figures OUT` draws them."""
    import json
    import subprocess
    import sys

    import pandas as pd

    pd.DataFrame({"method": ["mopo", "dpo"], "parameter": ["b=0.6", "beta=0.08"], "V0": [0.6, 0.7], "V1": [0.65, 0.4],
                  "stderr0": [0.01, 0.02], "stderr1": [0.02, 0.01]}).to_csv(tmp_path / "points.csv", index=False)
    (tmp_path / "comparison.json").write_text(json.dumps({"reference_point": [0.3, 0.2], "thresholds": [0.6]}))
    done = subprocess.run([sys.executable, "-m", "app.figures", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    html = (tmp_path / "comparison.html").read_text()
    assert "HV reference point" in html and "MOPO b=0.6" in html and '"b=0.6"' in html
