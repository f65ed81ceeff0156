"""The text-task comparison: equal label budgets, seeds, intervals and the dominance rule.

Independent answers: each point's win-rates and standard errors recomputed here from the
evaluation's own samples with the task's ground-truth scorers (``synthetic.text_task.preference``);
the label budget from the trainers' own training sets and a count of the oracle's calls made
here; the summary's means and 95% interval half-widths recomputed from the per-seed rows with
``scipy.stats.t``; the constraint status, dominance counts (the rule applied in a plain loop)
and the hypervolume of the seed means by hand; the dominance rule itself on hand-made
intervals; re-evaluating a policy gives the same numbers."""
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mopo_core.cli.main import main
from mopo_core.lm.trainer import Trainer
from mopo_core.runs import RunStore
from mopo_core.training import common, text_comparison
from mopo_core.training.text_comparison import (ComparisonSettings, ci_dominates, markdown_table, run_comparison,
                                                sampled_kl)
from mopo_core.training.text_task import TextTaskSetup, build_text_task, task_oracle
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


def _half_width(values):
    """Half-width of the 95% Student-t interval of ``values``, from scipy.stats.t."""
    x = np.asarray(values, dtype=float)
    return stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))


SETTINGS = dict(steps=3, thresholds=(0.5, 0.6), secondary_weights=(0.5,), soup_points=3, batch_size=4, seeds=2,
                eval_prompts=6)
SETUP = dict(n_prompts=60, sft_steps=20, eval_samples=2)


@pytest.mark.slow
def test_comparison_runs_every_method_with_equal_budgets_and_intervals(tmp_path, monkeypatch):
    evaluations = []  # (task, policy, reference, tokenizer, prompts, evaluation) per point, in the points' order
    evaluate = text_comparison.evaluate_on_task

    def recording(task, policy, reference, tokenizer, prompts, setup, *args, **kwargs):
        evaluation = evaluate(task, policy, reference, tokenizer, prompts, setup, *args, **kwargs)
        evaluations.append((task, policy, reference, tokenizer, prompts, evaluation))
        return evaluation

    trained = []  # (method, online, training set) of every trainer the comparison builds, experts included
    seeds = []

    class RecordingTrainer(Trainer):
        def __init__(self, model, tokenizer, dataset, config, *args, **kwargs):
            trained.append((config.method, config.online, dataset))
            seeds.append(config.seed)
            super().__init__(model, tokenizer, dataset, config, *args, **kwargs)

    oracle_calls = []

    def counted_oracle(task):
        oracle = task_oracle(task)

        def call(*args):
            oracle_calls.append(args)
            return oracle(*args)
        return call

    monkeypatch.setattr(text_comparison, "evaluate_on_task", recording)
    monkeypatch.setattr(text_comparison, "Trainer", RecordingTrainer)
    monkeypatch.setattr(common, "Trainer", RecordingTrainer)
    monkeypatch.setattr(text_comparison, "task_oracle", counted_oracle)
    store = RunStore(tmp_path / "runs.sqlite")
    settings = ComparisonSettings(**SETTINGS)
    setup = TextTaskSetup(**SETUP)
    result = run_comparison(setup, settings, store)
    points, summary = result.points, result.summary
    counts = [("dpo", 1), ("modpo", 1), ("mopo", 2), ("mopo_online", 2), ("rewarded_soups", 3), ("weighted_dpo", 1)]
    assert list(points.method.value_counts().sort_index().items()) == [(m, 2 * n) for m, n in counts]
    assert sorted(points.seed.unique()) == [0, 1] and sorted(seeds) == [0] * (len(seeds) // 2) + [1] * (len(seeds) // 2)

    # Equal label budgets: steps x batch x C(2, 2) = 12 oracle calls per online policy, counted here;
    # every offline trainer (experts included) on a training set of exactly 12 soft-labelled pairs.
    budget = 3 * 4 * 1
    assert settings.label_budget == budget and set(points.labels) == {budget}
    online = [t for t in trained if t[1]]
    assert len(online) == 2 * 2 and len(oracle_calls) == len(online) * budget
    offline = [dataset for _, is_online, dataset in trained if not is_online]
    assert len(offline) == 2 * (2 + 1 + 1 + 1 + 1)  # per seed: 2 MOPO, weighted DPO, MODPO, the two experts
    assert all(len(dataset) == budget for dataset in offline)
    task = evaluations[0][0]
    for pair in offline[0]:  # soft labels: the oracle's own probabilities
        np.testing.assert_allclose(pair.labels, [preference(pair.prompt, pair.response_a, pair.response_b, k,
                                                            task.temperature) for k in task.objectives])
    train_prompts = {pair.prompt for dataset in offline for pair in dataset}

    # Every point: evaluated on the same 6 held-out prompts; its win-rates and standard errors from its
    # own samples; re-evaluating a policy (and its KL) gives the same numbers.
    assert len(evaluations) == len(points)
    prompts = evaluations[0][4]
    assert len(prompts) == 6 and not set(prompts) & train_prompts
    for (_, _, _, _, used, evaluation), row in zip(evaluations, points.itertuples()):
        assert used == prompts
        rates, stderr = _win_rates_by_hand(evaluation.samples, task.objectives, task.temperature)
        np.testing.assert_allclose([row.V0, row.V1], rates, atol=1e-12)
        np.testing.assert_allclose([row.stderr0, row.stderr1], stderr, atol=1e-12)
    _, policy, reference, tokenizer, _, _ = evaluations[len(points) // 2]
    row = points.iloc[len(points) // 2]
    again = evaluate(task, policy, reference, tokenizer, prompts, setup)
    np.testing.assert_array_equal(again.win_rates, [row.V0, row.V1])
    assert sampled_kl(policy, reference, tokenizer, prompts, setup.eval_samples, setup.seed) == row.kl
    assert sampled_kl(reference, reference, tokenizer, prompts, 2, 0) == pytest.approx(0, abs=1e-9)
    assert (points.kl >= 0).all()

    soups, dpo = points[points.method == "rewarded_soups"], points[points.method == "dpo"]
    np.testing.assert_allclose(soups[soups.parameter == "a=0.00"][["V0", "V1"]].to_numpy(float),
                               dpo[["V0", "V1"]].to_numpy(float))

    # The summary, by hand from the per-seed rows.
    assert len(summary) == 10
    for r in summary.itertuples():
        rows = points[(points.method == r.method) & (points.parameter == r.parameter)]
        assert r.seeds == 2 and r.labels == budget
        for column in ("V0", "V1", "kl"):
            assert getattr(r, column) == pytest.approx(rows[column].mean(), abs=1e-12)
            assert getattr(r, f"{column}_ci") == pytest.approx(_half_width(rows[column]), rel=1e-9)
        if r.method in ("mopo", "mopo_online"):
            slack = rows.V1 - float(r.parameter.removeprefix("b="))
            assert r.slack == pytest.approx(slack.mean(), abs=1e-12)
            assert r.slack_ci == pytest.approx(_half_width(slack), rel=1e-9)
            low, high = slack.mean() - _half_width(slack), slack.mean() + _half_width(slack)
            assert r.constraint == ("violated" if high < 0 else "met" if low > 0 else "tight")
        else:
            assert np.isnan(r.slack) and r.constraint == ""
    lows = summary[["V0", "V1"]].to_numpy() - summary[["V0_ci", "V1_ci"]].to_numpy()
    highs = summary[["V0", "V1"]].to_numpy() + summary[["V0_ci", "V1_ci"]].to_numpy()
    for i in range(len(summary)):
        beats = [j for j in range(len(summary)) if summary.method[j] != summary.method[i]
                 and all(lows[i] >= highs[j]) and any(lows[i] > highs[j])]
        beaten = [j for j in range(len(summary)) if summary.method[j] != summary.method[i]
                  and all(lows[j] >= highs[i]) and any(lows[j] > highs[i])]
        assert (summary.dominates[i], summary.dominated_by[i]) == (len(beats), len(beaten))
    means = summary[["V0", "V1"]].to_numpy()
    np.testing.assert_allclose(result.reference_point, means.min(axis=0) - 0.01, atol=1e-15)
    for method, volume in result.hypervolume.items():
        assert volume == pytest.approx(_staircase_hv(means[summary.method == method], result.reference_point),
                                       rel=1e-12, abs=1e-15)
    table = markdown_table(summary, task.objectives)
    assert f"{summary.V0[0]:.3f} ± {summary.V0_ci[0]:.3f}" in table and "KL (nats/response)" in table

    kinds = store.list_runs().kind.value_counts()
    assert kinds["comparison"] == 1 and kinds["train"] == len(trained)
    (run_id,) = store.list_runs().query("kind == 'comparison'").id
    run = store.get_run(run_id)
    assert run.config["label_budget"] == budget
    np.testing.assert_allclose(run.points[["v0", "v1"]].to_numpy(), points[["V0", "V1"]].to_numpy())


def test_ci_dominance_on_hand_made_intervals():
    # Intervals separated on both objectives: A dominates B, not the other way round.
    assert ci_dominates([0.7, 0.7], [0.05, 0.05], [0.5, 0.5], [0.05, 0.05])
    assert not ci_dominates([0.5, 0.5], [0.05, 0.05], [0.7, 0.7], [0.05, 0.05])
    # Touching on one objective (A's lower bound = B's upper bound = 0.5), separated on the other.
    assert ci_dominates([0.75, 0.9], [0.25, 0.05], [0.25, 0.5], [0.25, 0.05])
    # Touching on every objective: nothing separates them.
    assert not ci_dominates([0.75, 0.75], [0.25, 0.25], [0.25, 0.25], [0.25, 0.25])
    # Better means everywhere but overlapping intervals on one objective: no dominance either way.
    assert not ci_dominates([0.9, 0.6], [0.01, 0.1], [0.5, 0.55], [0.01, 0.1])
    assert not ci_dominates([0.5, 0.55], [0.01, 0.1], [0.9, 0.6], [0.01, 0.1])
    # Better means, overlapping intervals everywhere; plain (point) dominance with zero widths.
    assert not ci_dominates([0.6, 0.6], [0.2, 0.2], [0.5, 0.5], [0.2, 0.2])
    assert ci_dominates([0.6, 0.6], [0, 0], [0.5, 0.5], [0, 0])
    # A trade-off never dominates, however narrow; a NaN width never dominates; three objectives.
    assert not ci_dominates([0.9, 0.1], [0, 0], [0.1, 0.9], [0, 0])
    assert not ci_dominates([0.9, 0.9], [np.nan, 0.01], [0.1, 0.1], [0.01, 0.01])
    assert ci_dominates([0.9, 0.9, 0.5], [0.01, 0.01, 0.0], [0.1, 0.1, 0.5], [0.01, 0.01, 0.0])
    assert not ci_dominates([0.9, 0.9, 0.5], [0.01, 0.01, 0.1], [0.1, 0.1, 0.5], [0.01, 0.01, 0.1])


def test_summary_of_hand_made_points():
    """Three MOPO thresholds whose V1 - b intervals lie above, across and below 0, and a DPO point."""
    v1 = {"b=0.5": [0.70, 0.72, 0.71], "b=0.6": [0.30, 0.90, 0.60], "b=0.75": [0.30, 0.31, 0.29]}
    rows = [{"method": "mopo", "parameter": b, "seed": i, "labels": 12, "V0": 0.5 + 0.01 * i, "V1": v, "kl": 0.1 * i}
            for b, values in v1.items() for i, v in enumerate(values)]
    rows += [{"method": "dpo", "parameter": "primary", "seed": i, "labels": 12, "V0": v0, "V1": 0.2, "kl": 1.0}
             for i, v0 in enumerate([0.30, 0.31, 0.32])]
    summary = text_comparison.summarise(pd.DataFrame(rows))
    assert list(summary.constraint) == ["met", "tight", "violated", ""]
    assert summary.slack[0] == pytest.approx(0.21) and summary.slack_ci[0] == pytest.approx(_half_width(v1["b=0.5"]))
    assert summary.V0_ci[3] == pytest.approx(_half_width([0.30, 0.31, 0.32])) and summary.kl_ci[3] == 0
    # b=0.5 and b=0.75 are separated from DPO on both objectives; b=0.6's V1 interval reaches below 0.2.
    assert summary.V1[1] - summary.V1_ci[1] < 0.2
    assert list(summary.dominates) == [1, 0, 1, 0] and list(summary.dominated_by) == [0, 0, 0, 2]
    rows[0]["labels"] = 13
    with pytest.raises(ValueError, match="labels"):
        text_comparison.summarise(pd.DataFrame(rows))


def test_train_pairs_gives_exactly_that_many_training_pairs_on_the_training_prompts():
    base = TextTaskSetup(n_prompts=30, sft_steps=1)
    _, _, _, (train, validation, test) = build_text_task(base)
    task, _, _, (exact, validation2, test2) = build_text_task(replace(base, train_pairs=101, soft_labels=True))
    assert len(exact) == 101 and set(exact.prompts()) == set(train.prompts())
    per_prompt = pd.Series([p.prompt for p in exact]).value_counts()
    assert per_prompt.max() - per_prompt.min() <= 1  # round robin over the training prompts
    assert validation2.prompts() == validation.prompts() and test2.prompts() == test.prompts()
    assert all(p.response_a != p.response_b for p in exact)
    pair = exact[0]
    np.testing.assert_allclose(pair.labels, [preference(pair.prompt, pair.response_a, pair.response_b, k,
                                                        task.temperature) for k in task.objectives])
    with pytest.raises(ValueError, match="train_pairs"):
        build_text_task(replace(base, train_pairs=0))


def test_bad_settings_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="seeds"):
        run_comparison(TextTaskSetup(), ComparisonSettings(seeds=1))
    with pytest.raises(ValueError, match="n_candidates"):
        run_comparison(TextTaskSetup(), ComparisonSettings(n_candidates=1))
    with pytest.raises(ValueError, match="eval_prompts.*n_prompts=20"):
        run_comparison(TextTaskSetup(n_prompts=20, sft_steps=1), ComparisonSettings(eval_prompts=48))
    assert ComparisonSettings().label_budget == 150 * 8 * 1
    assert ComparisonSettings(n_candidates=3, steps=10, batch_size=2).label_budget == 10 * 2 * 3


@pytest.mark.slow
def test_compare_text_writes_the_interval_table(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--store", str(tmp_path / "runs.sqlite"), "compare-text", "--out", str(out), "--steps", "2",
                 "--seeds", "2", "--eval-prompts", "4", "--n-prompts", "40", "--sft-steps", "10",
                 "--thresholds", "0.5"])
    assert code == 0
    printed = capsys.readouterr().out
    points = pd.read_csv(out / "points.csv")
    # Per seed: MOPO offline and online, DPO, 3 MODPO, 3 weighted DPO, 5 soups.
    assert len(points) == 2 * 14 and set(points.seed) == {0, 1} and set(points.labels) == {2 * 8}
    summary = (out / "summary.md").read_text()
    assert "16 oracle-labelled comparisons per method" in summary and "V1 - b" in summary
    row = points[points.method == "mopo_online"]
    cell = f"{row.V0.mean():.3f} ± {_half_width(row.V0):.3f}"
    assert cell in summary and cell in printed
    assert json.loads((out / "comparison.json").read_text())["label_budget"] == 16


def test_the_command_lines_output_is_drawn_by_app_figures(tmp_path):
    """compare-text writes points.csv (one row per policy and seed) and comparison.json; `python -m
    app.figures OUT` draws each (method, parameter)'s seed mean with its KL in the label."""
    pd.DataFrame({"method": ["mopo", "mopo", "dpo", "dpo"], "parameter": ["b=0.6", "b=0.6", "primary", "primary"],
                  "seed": [0, 1, 0, 1], "labels": [8] * 4, "V0": [0.6, 0.62, 0.7, 0.72], "V1": [0.65, 0.63, 0.4, 0.42],
                  "stderr0": [0.01] * 4, "stderr1": [0.02] * 4, "kl": [1.0, 3.0, 10.0, 12.0]}
                 ).to_csv(tmp_path / "points.csv", index=False)
    (tmp_path / "comparison.json").write_text(json.dumps({"reference_point": [0.3, 0.2], "thresholds": [0.6]}))
    done = subprocess.run([sys.executable, "-m", "app.figures", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    html = (tmp_path / "comparison.html").read_text()
    assert "HV reference point" in html and "MOPO b=0.6" in html and '"b=0.6 \\u00b7 KL 2.0"' in html
    assert '"primary \\u00b7 KL 11.0"' in html and "the SFT reference (0.5, 0.5)" in html
