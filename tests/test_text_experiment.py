"""The text-task comparison: every method gets a point, the summary follows the Pareto layer."""
import numpy as np
import pytest

from mopo_core.pareto import hypervolume
from mopo_core.runs import RunStore
from mopo_core.training.text_comparison import ComparisonSettings, comparison_figure, run_comparison
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
    fig = comparison_figure(points, ref, settings)
    assert "maximised" in fig.layout.title.text and len(fig.data) == 7  # 6 methods + the reference point
    kinds = store.list_runs().kind.value_counts()
    # 2 MOPO offline, 2 online, MODPO, weighted DPO and the two DPO experts (DPO, MODPO's margin, the soups)
    assert kinds["comparison"] == 1 and kinds["train"] == 8
