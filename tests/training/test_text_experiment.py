"""The text-task comparison: every method gets a point, the summary follows the Pareto layer."""
import numpy as np
import pytest

from mopo_core.pareto import hypervolume
from mopo_core.runs import RunStore
from app.figures import comparison_figure
from mopo_core.training.text_comparison import ComparisonSettings, run_comparison
from mopo_core.training.text_task import TextTaskSetup


@pytest.mark.slow
def test_comparison_runs_every_method_and_records_the_points(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    settings = ComparisonSettings(steps=3, thresholds=(0.5, 0.6), secondary_weights=(0.5,), soup_points=3,
                                  batch_size=4, n_candidates=3)
    points, summary, ref = run_comparison(TextTaskSetup(n_prompts=20, sft_steps=20, eval_samples=2), settings, store)
    assert list(points.method.value_counts().sort_index().items()) == [
        ("dpo", 1), ("modpo", 1), ("mopo", 2), ("mopo_online", 2), ("rewarded_soups", 3), ("weighted_dpo", 1)]
    values = points[["V0", "V1"]].to_numpy()
    assert np.all((values >= 0) & (values <= 1)) and np.all(values > ref)
    soups = points[points.method == "rewarded_soups"]
    dpo = points[points.method == "dpo"]
    np.testing.assert_allclose(soups.iloc[0][["V0", "V1"]].to_numpy(float), dpo.iloc[0][["V0", "V1"]].to_numpy(float))
    row = summary.set_index("method").loc["mopo"]
    assert row["hypervolume"] == hypervolume(points[points.method == "mopo"][["V0", "V1"]].to_numpy(), ref)
    assert 0 <= row["thresholds_met"] <= row["thresholds_met_within_1.96se"] <= 2
    fig = comparison_figure(points, ref, settings.thresholds)
    assert "maximised" in fig.layout.title.text and len(fig.data) == 7  # 6 methods + the reference point
    kinds = store.list_runs().kind.value_counts()
    # 2 MOPO offline, 2 online, MODPO, weighted DPO and the two DPO experts (DPO, MODPO's margin, the soups)
    assert kinds["comparison"] == 1 and kinds["train"] == 8


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
