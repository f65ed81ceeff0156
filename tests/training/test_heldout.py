"""The held-out estimate a run logs every ``heldout_every`` steps is the task's own evaluation:
at the last step it equals the run's point and ``evaluate`` of the run's checkpoint, value and
standard error, on the scale the point is plotted."""
import pytest

from mopo_core.lm.config import TrainConfig
from mopo_core.runs import RunStore
from mopo_core.training.text_task import TextTaskSetup, evaluate_text_checkpoint, train_on_text_task

SETUP = TextTaskSetup(n_prompts=20, sft_steps=20, eval_samples=2)


def test_the_held_out_metric_is_evaluate_on_the_same_checkpoint(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    config = TrainConfig(method="mopo", thresholds=(0.5,), steps=4, batch_size=4, lr=1e-2, heldout_every=2,
                         log_every=3, checkpoint_every=4)
    result, evaluation = train_on_text_task(config, SETUP, store, tmp_path / "run")
    metrics = store.get_run(result.run_id).metrics
    logged = {(int(r.step), r.name): r.value for r in metrics.itertuples()}
    assert (2, "heldout_1") in logged  # logged on its own steps, whatever log_every says
    _, again = evaluate_text_checkpoint(store, result.run_id, config, SETUP, tmp_path / "run")
    for k in range(2):
        assert logged[(4, f"heldout_{k}")] == pytest.approx(evaluation.win_rates[k], abs=1e-12)
        assert logged[(4, f"heldout_se_{k}")] == pytest.approx(evaluation.win_rate_stderr[k], abs=1e-12)
        assert again.win_rates[k] == pytest.approx(evaluation.win_rates[k], abs=1e-12)
    assert logged[(2, "heldout_1")] != logged[(4, "heldout_1")]  # it follows the policy
