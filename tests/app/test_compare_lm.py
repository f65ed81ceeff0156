"""Compare extended to language-model runs: LM points keep their generations (bounded), LM and
tabular runs are told apart as different value scales, and the Compare page shows an LM point's
config, metrics, training curves and generations beside the reference model's."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.app_support import figures

from app.shared import CONVENTION
from app.presenters import compare as compare_presenter
from app.presenters.smoothing import ema
from mopo_core.experiments import compare_runs
from mopo_core.lm.evaluation import POINT_PROMPTS, POINT_SAMPLES, Evaluation
from mopo_core.runs import RunStore
from synthetic.text_task import score

PAGE = str(Path(__file__).parents[2] / "app" / "views" / "compare.py")
NAMES = ("helpfulness", "harmlessness")


def _evaluation(n_prompts: int, n_samples: int) -> Evaluation:
    prompts = [f"how do i cook garlic pasta and butter ? {i}" for i in range(n_prompts)]
    samples = {p: {"policy": [f"garlic pasta then {i} {j}" for j in range(n_samples)],
                   "reference": [f"you should try dangerous {i} {j}" for j in range(n_samples)]}
               for i, p in enumerate(prompts)}
    return Evaluation(NAMES, np.array([0.7, 0.4]), np.array([0.05, 0.06]), np.array([0.6, 0.5]),
                      np.array([0.3, 0.4]), samples)


def _lm_run(store: RunStore, evaluation: Evaluation, kind="train", config=None, steps=3) -> int:
    run_id = store.create_run(kind, config if config is not None else
                              {"task": "text", "method": "mopo", "thresholds": [0.5], "objectives": list(NAMES)})
    for step in range(1, steps + 1):
        store.log_metrics(run_id, step, {"loss": 2.0 / step, "lambda_1": 0.1 * step, "constraint_1": 0.4 + 0.01 * step,
                                         "threshold_1": 0.5, "ess": 0.9, "tokens_per_s": 100.0})
    store.add_points(run_id, [evaluation.as_point("mopo", {"method": "mopo", "thresholds": [0.5]})])
    store.set_status(run_id, "finished")
    return run_id


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "runs.sqlite")


# ----------------------------------------------------------------------------- engine


def test_a_point_keeps_a_bounded_number_of_generations():
    point = _evaluation(POINT_PROMPTS + 3, POINT_SAMPLES + 2).as_point("mopo", {})
    samples = point["extra"]["samples"]
    assert len(samples) == POINT_PROMPTS
    assert all(len(r["policy"]) == len(r["reference"]) == POINT_SAMPLES for r in samples)
    assert samples[0]["prompt"].endswith("? 0") and samples[0]["policy"][0] == "garlic pasta then 0 0"
    assert point["extra"]["samples_kept"] == {"prompts": POINT_PROMPTS, "of_prompts": POINT_PROMPTS + 3,
                                              "per_prompt": POINT_SAMPLES, "of_per_prompt": POINT_SAMPLES + 2}
    small = _evaluation(2, 3).as_point("mopo", {})["extra"]
    assert len(small["samples"]) == 2 and len(small["samples"][1]["reference"]) == 3
    assert small["samples_kept"] == {"prompts": 2, "of_prompts": 2, "per_prompt": 3, "of_per_prompt": 3}


def test_lm_and_tabular_runs_are_different_value_scales(store):
    tabular = store.create_run("sweep", {"structure": "bt_conflict", "seed": 0})
    store.add_points(tabular, [{"label": "mopo", "params": {}, "values": [0.6, 0.5]}])
    lm = _lm_run(store, _evaluation(2, 2))
    evaluate = _lm_run(store, _evaluation(1, 1), kind="evaluate", config={"source_run": lm, "step": 3})
    comparison = store.create_run("comparison", {"task": "text", "objectives": list(NAMES),
                                                 "reference_point": [0.3, 0.3]})
    store.add_points(comparison, [{"label": "dpo", "params": {}, "values": [0.6, 0.4]}])
    runs = [store.get_run(i) for i in (tabular, lm, evaluate, comparison)]
    scale_tab, scale_lm = compare_runs.TABULAR, compare_runs.LM
    assert [compare_runs.value_scale(r) for r in runs] == [scale_tab, scale_lm, scale_lm, scale_lm]
    groups = compare_runs.group_by_scale(runs[::-1])
    assert list(groups) == [scale_tab, scale_lm] and [r.id for r in groups[scale_lm]] == [comparison, evaluate, lm]
    assert "behaviour" in compare_presenter.SCALES[scale_tab] and "reference model" in compare_presenter.SCALES[scale_lm]
    # LM reference point: the reference model ties with itself; a recorded one wins.
    np.testing.assert_allclose(compare_runs.reference_point_for(runs[1]), [0.5, 0.5])
    np.testing.assert_allclose(compare_runs.reference_point_for(runs[3]), [0.3, 0.3])
    np.testing.assert_allclose(compare_runs.reference_point_for(runs[0]), [0.5, 0.5])  # rebuilt from the structure
    assert compare_runs.objective_names_for(runs[1]) == NAMES  # from the config
    assert compare_runs.objective_names_for(runs[2]) == NAMES  # from the point's extra
    assert compare_runs.run_title(runs[1]) == "train mopo b=[0.5] on the text task"
    row = store.list_runs().iloc[1]
    assert compare_presenter.run_label(row) == f"{lm} · train (LM) · (unnamed) · 1 point"


def test_lm_point_details_generations_and_curves(store):
    run = store.get_run(_lm_run(store, _evaluation(2, 3)))
    d = compare_runs.point_details(run, 0)
    assert d["scale"] == compare_runs.LM and d["objectives"] == NAMES
    assert d["values"] == {"V0": 0.7, "V1": 0.4}
    assert "samples" not in d["extra"] and "samples_kept" not in d["extra"]
    assert d["extra"]["win_rate_stderr"] == [0.05, 0.06]
    assert len(d["samples"]) == 2 and d["samples_kept"]["of_per_prompt"] == 3

    scorer = compare_presenter.sample_scorer(run)
    gens = compare_presenter.generations_frame(d, scorer)
    assert len(gens) == 2 * 3
    assert list(gens.columns) == ["prompt", "sample", "policy", "reference", "policy helpfulness",
                                  "policy harmlessness", "reference helpfulness", "reference harmlessness"]
    first = gens.iloc[0]
    assert first["policy"] == "garlic pasta then 0 0" and first["reference"] == "you should try dangerous 0 0"
    np.testing.assert_allclose(first[["policy helpfulness", "policy harmlessness"]].to_numpy(dtype=float),
                               score(first["prompt"], first["policy"], NAMES))
    assert first["reference harmlessness"] == pytest.approx(np.exp(-1))  # one risky word
    # no scorer
    assert list(compare_presenter.generations_frame(d).columns) == ["prompt", "sample", "policy", "reference"]

    settings = compare_presenter.settings_table({"method": "mopo", "thresholds": [0.61234567], "tau": 0.08, "t0": None,
                                                 "text_setup": {"n_prompts": 10}})
    assert settings.values.tolist() == [["method", "mopo"], ["thresholds", "[0.6123]"], ["tau", "0.08"],
                                        ["t0", "–"], ["text_setup", "n_prompts=10"]]

    table = compare_presenter.metric_table(run)
    assert table["step"].tolist() == [1, 2, 3] and table["loss"].tolist() == pytest.approx([2.0, 1.0, 2 / 3])
    assert compare_presenter.training_curves(run) == {"loss": ["loss"], "lambda": ["lambda_1"],
                                                      "constraint": ["constraint_1", "threshold_1"], "other": ["ess"]}
    # Overlaid curves: the metrics offered (loss first, no throughput) and an EMA that starts at the first value.
    assert compare_presenter.overlay_metrics([run]) == ["loss", "constraint_1", "ess", "lambda_1", "threshold_1"]
    np.testing.assert_allclose(ema([2.0, np.nan, 1.0], 0.5), [2.0, np.nan, 4 / 3])
    np.testing.assert_allclose(ema([2.0, 1.0], 0.0), [2.0, 1.0])
    with pytest.raises(ValueError, match="smoothing"):
        ema([1.0], 1.0)
    curves = compare_presenter.overlay_curves([run], "loss", 0.0)
    assert curves[["run_id", "step"]].values.tolist() == [[run.id, 1], [run.id, 2], [run.id, 3]]
    assert compare_presenter.overlay_curves([run], "nothing", 0.5).empty

    # A tabular run's details keep their shape; a dataset run's samples get no programmatic scorer.
    tabular = store.create_run("sweep", {"seed": 0})
    store.add_points(tabular, [{"label": "mopo", "params": {}, "values": [0.6, 0.5], "extra": {"kl": 0.1}}])
    t = compare_runs.point_details(store.get_run(tabular), 0)
    assert t["scale"] == compare_runs.TABULAR and t["samples"] is None and t["extra"] == {"kl": 0.1}
    dataset = store.get_run(_lm_run(store, _evaluation(1, 1), config={"task": "dataset",
                                                                      "objectives": list(NAMES)}))
    assert compare_presenter.sample_scorer(dataset) is None
    assert compare_presenter.generations_frame(compare_runs.point_details(dataset, 0)).shape == (1, 4)


def test_lm_runs_are_named_by_their_job_else_by_their_config(store, tmp_path, monkeypatch):
    """A Train job's name labels its run (a resume job's does not); an unnamed train run without a
    job is described from its config (method, b, τ, steps, seed); a stored name wins over both."""
    from dataclasses import asdict

    from mopo_core.lm.config import TrainConfig
    from mopo_core.training import jobs
    from mopo_core.training.text_task import TextTaskSetup

    by_job = _lm_run(store, _evaluation(1, 1))
    described = _lm_run(store, _evaluation(1, 1), config={**asdict(TrainConfig(thresholds=(0.6,), steps=40, seed=3)),
                                                          "task": "text", "objectives": list(NAMES)})
    plain = _lm_run(store, _evaluation(1, 1))
    job = jobs.enqueue_training(store.path, TrainConfig(steps=3, batch_size=4), TextTaskSetup(n_prompts=10),
                                name="MOPO b1=0.7 · my sweep")
    with sqlite3.connect(store.path) as conn:  # what the worker does when it starts the job's run
        conn.execute("UPDATE jobs SET run_id = ? WHERE id = ?", (by_job, job))
        conn.execute("INSERT INTO jobs (kind, name, spec, status, run_id, created_at) "  # a resume job names no run
                     "VALUES ('resume', 'resume it', '{}', 'done', ?, '2026-01-01')", (plain,))
    assert compare_presenter.job_names(store.path) == {by_job: "MOPO b1=0.7 · my sweep"}
    listed = store.list_runs()
    configs = {i: p["config"] for i, p in store.progress(listed["id"]).items()}
    names = compare_presenter.run_names(listed, configs, compare_presenter.job_names(store.path))
    assert names == {by_job: "MOPO b1=0.7 · my sweep", described: "MOPO b1=0.6 τ=0.08 · 40 steps · seed 3",
                     plain: None}
    store.rename_run(by_job, "renamed")
    assert compare_presenter.run_names(store.list_runs(), configs, {by_job: "job"})[by_job] == "renamed"
    store.rename_run(by_job, None)

    at = _page(store.path, monkeypatch, runs=[by_job, described])
    options = at.multiselect(key="compare_runs").options
    assert f"{by_job} · train (LM) · MOPO b1=0.7 · my sweep · 1 point" in options
    assert f"{plain} · train (LM) · (unnamed) · 1 point" in options
    series = [t["name"] for t in figures(at)[0]["data"] if (t.get("name") or "").startswith("#")]
    assert series == [f"#{by_job} MOPO b1=0.7 · my sweep", f"#{described} MOPO b1=0.6 τ=0.08 · 40 steps · seed 3"]
    # Their training curves overlaid, smoothed, each run in its own colour (the colour of its points).
    overlay = next(f for f in figures(at) if f["layout"]["title"]["text"].startswith("Training curves of the sel"))
    assert "loss" in overlay["layout"]["title"]["text"] and "EMA 0.6" in overlay["layout"]["title"]["text"]
    smoothed = [t for t in overlay["data"] if t.get("showlegend") is not False]
    assert [t["name"] for t in smoothed] == series
    front = {t["name"]: t["marker"]["color"] for t in figures(at)[0]["data"] if (t.get("name") or "") in series}
    assert [t["line"]["color"] for t in smoothed] == [front[n] for n in series]
    at.slider(key="compare_smoothing").set_value(0.0).run()
    overlay = next(f for f in figures(at) if f["layout"]["title"]["text"].startswith("Training curves of the sel"))
    assert len(overlay["data"]) == 2 and overlay["data"][0]["y"] == pytest.approx([2.0, 1.0, 2 / 3])


def test_lm_instances_follow_the_task_and_what_it_measures_on():
    key = compare_presenter.instance_key
    text = key("train", {"task": "text", "method": "mopo", "objectives": list(NAMES), "seed": 1})
    assert text == key("evaluate", {"source_run": 3, "step": 10}) == key("train", {"task": "text", "seed": 2})
    one, other = (key("train", {"task": "dataset", "model_dir": "m", "dataset_setup": {"data": data, "split": [0.8]}})
                  for data in ("a.jsonl", "b.jsonl"))
    assert len({text, one, other}) == 3
    assert compare_presenter.describe_instance(text) == "the text task"
    assert "a.jsonl" in compare_presenter.describe_instance(one)


# ----------------------------------------------------------------------------- a real text-task run


@pytest.fixture(scope="module")
def lm_store(tmp_path_factory) -> tuple[Path, int]:
    """Example runs 1-5 (tabular) and one MOPO run trained live on the text task (run 6)."""
    from mopo_core.lm.config import TrainConfig
    from mopo_core.training.text_task import TextTaskSetup, train_on_text_task

    path = tmp_path_factory.mktemp("lm_store") / "runs.sqlite"
    store = RunStore(path)
    compare_presenter.create_example_runs(store, steps=300)
    result, _ = train_on_text_task(TrainConfig(steps=3, batch_size=4), TextTaskSetup(n_prompts=10, sft_steps=20),
                                   store)
    return path, result.run_id


def test_a_text_task_train_run_stores_its_generations(lm_store):
    path, run_id = lm_store
    run = RunStore(path).get_run(run_id)
    assert compare_runs.value_scale(run) == compare_runs.LM and compare_runs.n_objectives(run) == 2
    d = compare_runs.point_details(run, 0)
    kept = d["samples_kept"]
    assert 0 < kept["prompts"] <= POINT_PROMPTS and kept["per_prompt"] == min(POINT_SAMPLES, 8)
    gens = compare_presenter.generations_frame(d, compare_presenter.sample_scorer(run))
    assert len(gens) == kept["prompts"] * kept["per_prompt"]
    assert len(json.dumps(run.points["extra"].iloc[0])) < 8_000  # the store stays small
    assert gens[["policy helpfulness", "reference harmlessness"]].notna().all().all()
    panels = compare_presenter.training_curves(run)
    assert panels["loss"] == ["loss"] and panels["lambda"] == ["lambda_1"]
    assert panels["constraint"] == ["constraint_1", "threshold_1"]
    assert compare_presenter.metric_table(run)["step"].tolist() == [1, 2, 3]


# ----------------------------------------------------------------------------- the page


def _page(path: Path, monkeypatch, runs) -> AppTest:
    monkeypatch.setenv("MOPO_STORE", str(path))
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(PAGE, default_timeout=90)
    at.session_state["compare_runs"] = runs
    at.run()
    assert not at.exception
    return at


def test_compare_page_separates_lm_runs_and_shows_an_lm_point(lm_store, tmp_path, monkeypatch):
    source, run_id = lm_store
    path = tmp_path / "runs.sqlite"
    shutil.copy(source, path)
    at = _page(path, monkeypatch, runs=[1, run_id])
    # Mixed scales: a warning naming both and a choice; on a tie (one run each) the run picked last decides.
    assert any("not overlaid" in w.value and "reference model" in w.value and "behaviour" in w.value
               for w in at.warning)
    assert at.radio(key="compare_scale").value == compare_runs.LM
    at.radio(key="compare_scale").set_value(compare_runs.TABULAR).run()
    assert not at.exception
    assert CONVENTION in figures(at)[0]["layout"]["title"]["text"]
    at.radio(key="compare_scale").set_value(compare_runs.LM).run()
    front = figures(at)[0]
    assert "win-rate vs the reference model" in front["layout"]["xaxis"]["title"]["text"]
    assert CONVENTION not in front["layout"]["title"]["text"]
    assert "against the reference model's samples" in front["layout"]["title"]["text"]
    assert "r = (0.5000, 0.5000): the reference model's values" in front["layout"]["title"]["text"]
    assert any("win-rates against the reference model's samples" in c.value for c in at.caption)

    at.session_state["compare_pinned"] = [(run_id, 0)]
    at.run()
    assert not at.exception
    assert any(f"Run {run_id} (train" in e.label and "point 0 · mopo" in e.label for e in at.expander)
    metrics = next(df.value for df in at.dataframe if "win-rate vs reference" in df.value.columns)
    assert metrics["objective"].tolist() == ["V0 helpfulness", "V1 harmlessness"]
    curves = next(f for f in figures(at) if f["layout"]["title"]["text"].startswith("Training curves"))
    names = [t["name"] for t in curves["data"]]
    assert {"loss", "λ_1", "constraint estimate V1", "threshold b_1"} <= set(names)
    side = [t.value for t in at.table if "generation" in t.value.columns]
    assert len(side) == 2  # the policy's and the reference's, for the same prompt
    assert list(side[0].columns) == ["generation", "helpfulness", "harmlessness"]
    assert len(side[0]) == len(side[1]) > 0
    assert any(m.value.startswith("**reference model (same prompt)**") for m in at.markdown)
    prompt = at.selectbox(key=f"compare_prompt_{run_id}_0")
    assert prompt.value.endswith("?")
    # The run config is shown too: as a table and as JSON.
    config = next(df.value for df in at.dataframe if "setting" in df.value.columns and len(df.value) > 10)
    assert config.set_index("setting").loc["task", "value"] == "text"
    assert any(j.value and '"task": "text"' in j.value for j in at.json)
