"""The Compare page's engine (mopo_core.experiments.compare_runs) and its presenter's helpers
(app.presenters.compare: selection keys, labels, staircases, example runs) against hand computations."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from app.presenters import compare as compare_presenter
from mopo_core.experiments import compare_runs
from mopo_core.runs import RunStore

# Two tiny runs (both objectives maximised), worked out by hand:
#   A = (0.6, 0.4), (0.5, 0.5), (0.3, 0.7)     B = (0.55, 0.35), (0.4, 0.75), (0.2, 0.5)
# A dominates B: (0.6,0.4) > (0.55,0.35); (0.5,0.5) and (0.3,0.7) > (0.2,0.5)  -> 3 of A's points
# B dominates A: (0.4,0.75) > (0.3,0.7)                                       -> 1 of B's points
# Hypervolume above (0, 0): A = 0.3*0.7 + 0.2*0.5 + 0.1*0.4 = 0.35
#                           B = 0.4*0.75 + 0.15*0.35 = 0.3525 ((0.2,0.5) is dominated)
#                           union = 0.4*0.75 + 0.1*0.5 + 0.1*0.4 = 0.39
# Union front: A's (0.5,0.5), (0.6,0.4) and B's (0.4,0.75).
A = [[0.6, 0.4], [0.5, 0.5], [0.3, 0.7]]
B = [[0.55, 0.35], [0.4, 0.75], [0.2, 0.5]]


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "runs.sqlite")


def _run(store, values, config=None, name=None, labels=None, kind="sweep", extras=None):
    run_id = store.create_run(kind, config or {}, name=name)
    store.add_points(run_id, [
        {"label": (labels or ["mopo"] * len(values))[i], "params": {"threshold": [0.1 * i]}, "values": v,
         "extra": None if extras is None else extras[i]}
        for i, v in enumerate(values)
    ])
    store.set_status(run_id, "finished")
    return store.get_run(run_id)


@pytest.fixture
def two_runs(store):
    return _run(store, A, {"seed": 0}, name="A"), _run(store, B, {"seed": 1}, name="B")


def test_points_frame_has_run_label_idx_values_and_params(two_runs):
    pts = compare_runs.points_frame(list(two_runs))
    assert list(pts.series.unique()) == ["#1 A", "#2 B"]
    assert pts[["run_id", "idx"]].values.tolist() == [[1, 0], [1, 1], [1, 2], [2, 0], [2, 1], [2, 2]]
    np.testing.assert_allclose(compare_runs.value_matrix(pts), np.array(A + B))
    assert pts.params_text.iloc[1] == "threshold=[0.1]"
    assert pts.finite.all() and not pts.has_policy.any()
    assert pts.feasible.isna().all()  # these runs record no feasible flag


def test_dominance_counts_match_the_hand_computation(two_runs):
    sets = compare_runs.point_sets(compare_runs.points_frame(list(two_runs)))
    counts = compare_runs.dominance_counts(sets)
    assert counts.loc["#1 A", "#2 B"] == 3
    assert counts.loc["#2 B", "#1 A"] == 1
    assert counts.loc["#1 A", "#1 A"] == 0
    table = compare_runs.dominance_table(counts, sets)
    assert table.iloc[0].tolist() == ["#1 A", 3, 0, 3]


def test_hypervolume_per_run_and_union_front_match_the_hand_computation(two_runs):
    table = compare_runs.hypervolume_per_run(list(two_runs), [0.0, 0.0]).set_index("series")
    assert table.loc["#1 A", "hypervolume"] == pytest.approx(0.35)
    assert table.loc["#2 B", "hypervolume"] == pytest.approx(0.3525)
    assert table.loc["union of all", "hypervolume"] == pytest.approx(0.39)
    assert table.loc["#1 A", "share_of_union"] == pytest.approx(0.35 / 0.39)
    assert table.on_union_front.tolist() == [2, 1, 3]
    # Only points strictly beyond the reference point add volume: (0.2, 0.5) is not beyond (0.25, 0.3).
    beyond = compare_runs.hypervolume_per_run(list(two_runs), [0.25, 0.3]).set_index("series").beyond_reference
    assert beyond.tolist() == [3, 2, 5]
    assert compare_runs.hypervolume_per_run(list(two_runs), [0.25, 0.3]).hypervolume.iloc[0] == pytest.approx(
        0.05 * 0.4 + 0.2 * 0.2 + 0.1 * 0.1)


def test_union_front_mask_keeps_every_copy_and_skips_missing_values():
    values = np.array([[0.5, 0.5], [0.5, 0.5], [0.4, 0.4], [np.nan, 0.9], [0.6, 0.1]])
    assert compare_runs.union_front_mask(values).tolist() == [True, True, False, False, True]


def test_points_of_different_k_cannot_be_overlaid(store, two_runs):
    three = _run(store, [[0.1, 0.2, 0.3]])
    assert sorted(compare_runs.group_by_k([*two_runs, three])) == [2, 3]
    with pytest.raises(ValueError, match="different numbers of objectives"):
        compare_runs.points_frame([*two_runs, three])


# ----------------------------------------------------------------------------- attainment

# Three staircases; the median (0.5) front is what at least 2 of the 3 reach, worked out by hand
# per x-interval from the second-best height: (0,1]: 2.5, (1,1.5]: 2, (1.5,2]: 1.5, (2,2.5]: 1.
S1 = [[1, 3], [2, 2], [3, 1]]
S2 = [[1.5, 2.5], [2.5, 1.5]]
S3 = [[0.5, 0.5]]


def test_median_attainment_of_three_staircases():
    surfaces = compare_runs.attainment([S1, S2, S3])
    np.testing.assert_allclose(surfaces[0.5], [[1, 2.5], [1.5, 2], [2, 1.5], [2.5, 1]])
    # 0.25 of three sets: at least one, the union's front; 0.75: all three.
    np.testing.assert_allclose(surfaces[0.25], [[1, 3], [1.5, 2.5], [2, 2], [2.5, 1.5], [3, 1]])
    np.testing.assert_allclose(surfaces[0.75], [[0.5, 0.5]])


def _attainment_direct(sets, level):
    """Independent numpy EAF for two maximised objectives: at each candidate x, the
    ceil(level n)-th largest of the sets' best y among points with first coordinate >= x."""
    n = len(sets)
    need = max(1, math.ceil(level * n - 1e-9))
    arrays = [np.asarray(s, dtype=float).reshape(-1, 2) for s in sets]
    xs = np.unique(np.concatenate([a[:, 0] for a in arrays]))
    corners = []
    for x in xs:
        best = sorted((a[a[:, 0] >= x, 1].max() if (a[:, 0] >= x).any() else -np.inf for a in arrays), reverse=True)
        if best[need - 1] > -np.inf:
            corners.append((x, best[need - 1]))
    c = np.array(corners).reshape(-1, 2)
    keep = [not any((o >= p).all() and (o > p).any() for o in c) for p in c]
    return c[keep]


@pytest.mark.parametrize("seed", range(6))
def test_attainment_matches_a_direct_implementation(seed):
    rng = np.random.default_rng(seed)
    n_sets = int(rng.integers(1, 6))
    sets = [np.round(rng.random((int(rng.integers(0 if i else 1, 7)), 2)), 2) for i in range(n_sets)]
    levels = (0.25, 1 / 3, 0.5, 2 / 3, 0.75, 1.0)
    surfaces = compare_runs.attainment(sets, levels)
    for level in levels:
        np.testing.assert_allclose(surfaces[level], _attainment_direct(sets, level), err_msg=f"level {level}")


def test_attainment_rejects_bad_input():
    with pytest.raises(ValueError, match="levels"):
        compare_runs.attainment([S1], levels=(0.0,))
    with pytest.raises(ValueError, match=r"sets\[0\]"):
        compare_runs.attainment([[[np.nan, 1.0]]])


def test_staircase_walks_the_steps_down_to_the_floor():
    path = compare_presenter.staircase([[2, 1.5], [1, 2.5]], floor=[0, 0])
    np.testing.assert_allclose(path, [[0, 2.5], [1, 2.5], [1, 1.5], [2, 1.5], [2, 0]])
    assert compare_presenter.staircase(np.zeros((0, 2)), [0, 0]).shape == (0, 2)


def test_group_by_seed_and_seed_attainment(store):
    runs = [_run(store, S, {"structure": "x", "tau": 0.1, "seed": i}) for i, S in enumerate([S1, S2, S3])]
    other = _run(store, S1, {"structure": "x", "tau": 0.2, "seed": 0})
    groups = compare_runs.group_by_seed([*runs, other])
    assert [[r.id for r in g] for g in groups.values()] == [[1, 2, 3], [4]]
    items = compare_runs.seed_attainment([*runs, other])
    assert len(items) == 1 and items[0]["run_ids"] == [1, 2, 3] and items[0]["label"] == "mopo"
    assert [s["seed"] for s in items[0]["seeds"]] == [0, 1, 2]
    np.testing.assert_allclose(items[0]["surfaces"][0.5], [[1, 2.5], [1.5, 2], [2, 1.5], [2.5, 1]])
    table = compare_runs.attainment_table(items)
    assert set(table.level) == {0.25, 0.5, 0.75} and len(table) == 5 + 4 + 1
    # Ignoring tau as well puts the fourth run in the group.
    assert len(compare_runs.group_by_seed([*runs, other], ignore=("seed", "tau"))) == 1


# ----------------------------------------------------------------------------- reference point, details


def test_reference_point_from_config_structure_or_fallback(store, two_runs):
    recorded = _run(store, A, {"reference_point": [0.1, 0.2]})
    np.testing.assert_allclose(compare_runs.reference_point_for(recorded), [0.1, 0.2])
    built = _run(store, A, {"structure": "bt_conflict", "n_responses": 8, "n_prompts": 1, "seed": 3})
    np.testing.assert_allclose(compare_runs.reference_point_for(built), [0.5, 0.5])  # behaviour = reference: 1/2
    assert compare_runs.objective_names_for(built) == ("helpfulness", "harmlessness")
    assert compare_runs.reference_point_for(two_runs[0]) is None

    ref, source = compare_runs.choose_reference_point([compare_runs.reference_point_for(built)] * 2, np.array(A))
    np.testing.assert_allclose(ref, [0.5, 0.5])
    assert "reference policy" in source
    ref, source = compare_runs.choose_reference_point([[0.5, 0.4], [0.45, 0.5]], np.array(A))
    np.testing.assert_allclose(ref, [0.45, 0.4])
    assert "differ" in source
    # Fallback: min (0.3, 0.4) minus 5% of the range (0.3, 0.3).
    ref, source = compare_runs.choose_reference_point([None, [0.5, 0.5]], np.array(A))
    np.testing.assert_allclose(ref, [0.3 - 0.015, 0.4 - 0.015])
    assert "minimum" in source


def test_point_details_and_selection_keys(store):
    policy = [[0.7, 0.1, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0]]
    run = _run(store, A, {"structure": "bt_conflict", "seed": 0}, name="demo",
               extras=[{"policy": policy, "feasible": True}, None, {"kl": 0.3}])
    d = compare_runs.point_details(run, 0)
    assert d["run_id"] == run.id and d["label"] == "mopo" and d["params"] == {"threshold": [0.0]}
    assert d["values"] == {"V0": 0.6, "V1": 0.4}
    assert d["extra"] == {"feasible": True} and d["config"]["structure"] == "bt_conflict"
    np.testing.assert_allclose(d["policy"], policy)
    np.testing.assert_allclose(d["reference_policy"], np.full((1, 8), 0.125))
    assert d["kl"] == pytest.approx(0.7 * np.log(0.7 / 0.125) + 3 * 0.1 * np.log(0.1 / 0.125))
    assert compare_runs.point_details(run, 1)["policy"] is None
    assert compare_runs.run_points(run).feasible.tolist() == [True, None, None]
    with pytest.raises(KeyError, match="no point with idx 9"):
        compare_runs.point_details(run, 9)

    event = [{"curve_number": 0, "point_index": 2, "customdata": [run.id, 2, "mopo"]},
             {"curve_number": 3, "point_index": 0},  # a trace without customdata (e.g. a line)
             {"curve_number": 0, "point_index": 2, "customdata": [run.id, 2, "mopo"]}]
    assert compare_presenter.selection_keys(event) == [(run.id, 2)]
    assert compare_presenter.selection_keys(None) == []


def test_format_params_and_run_label():
    assert compare_runs.format_params({"threshold": [0.61234567], "tau": 0.01, "feasible": True}) == \
        "threshold=[0.6123], tau=0.01, feasible=True"
    row = pd.Series({"id": 4, "kind": "sweep", "name": None, "n_points": 11})
    assert compare_presenter.run_label(row) == "4 · sweep · (unnamed) · 11 points"


# ----------------------------------------------------------------------------- example runs


def test_create_example_runs_records_seed_group_baselines_and_k3(store):
    ids = compare_presenter.create_example_runs(store, steps=200)
    listed = store.list_runs()
    assert listed.id.tolist() == ids["sweeps"] + ids["baselines"] + ids["three_objectives"]
    assert (listed.status == "finished").all() and (listed.n_points > 1).all()
    runs = [store.get_run(i) for i in listed.id]
    assert [compare_runs.n_objectives(r) for r in runs] == [2, 2, 2, 2, 3]
    sweeps = runs[:3]
    assert len(compare_runs.group_by_seed(sweeps)) == 1  # they differ only by seed
    assert [r.config["seed"] for r in sweeps] == [0, 1, 2]
    baselines = runs[3]
    assert set(baselines.points.label) == {"dpo_primary", "ipo_primary", "weighted_dpo", "scalarised_ipo",
                                           "rewarded_soups", "reward_lagrangian"}
    for run in runs:
        assert all(isinstance(e, dict) and e.get("policy") is not None for e in run.points.extra)
        np.testing.assert_allclose(compare_runs.reference_point_for(run), [0.5] * compare_runs.n_objectives(run))
    # Seeds differ (sampled comparisons), so the median front and band are not all the same front.
    item = compare_runs.seed_attainment(sweeps)[0]
    assert len(item["surfaces"][0.5]) > 0
    assert not np.array_equal(item["surfaces"][0.25], item["surfaces"][0.75])
    table = compare_runs.hypervolume_per_run(runs[:4], [0.5, 0.5])
    assert table.hypervolume.iloc[-1] > 0
    # Same config and seed: the same numbers.
    again = RunStore(store.path.with_name("again.sqlite"))
    compare_presenter.create_example_runs(again, steps=200)
    for run in runs:
        np.testing.assert_array_equal(again.get_run(run.id).points[["v0", "v1"]], run.points[["v0", "v1"]])


# --------------------------------------------------------------------------- diverged runs (issue 14, item 3)


def test_diverged_runs_are_off_fronts_dominance_hypervolume_and_attainment_unless_asked(store):
    a = _run(store, A, name="A", config={"seed": 0})
    b = _run(store, B, name="B", config={"seed": 1})
    store.set_status(b.id, "diverged", "diverged at step 4: the loss 1634 is more than 20 times the first")
    b = store.get_run(b.id)
    assert compare_runs.is_diverged(b) and not compare_runs.is_diverged(a)
    assert compare_runs.split_diverged([a, b]) == ([a], [b])
    assert compare_runs.split_diverged([a, b], include_diverged=True) == ([a, b], [])

    hidden = compare_runs.points_frame([a, b])
    assert hidden.run_id.tolist() == [a.id] * 3
    # A alone: every point of A is on its own front; B's (0.4, 0.75) no longer knocks (0.3, 0.7) off.
    assert compare_runs.union_front_mask(compare_runs.value_matrix(hidden)).tolist() == [True, True, True]
    assert list(compare_runs.dominance_counts(compare_runs.point_sets(hidden)).index) == [f"#{a.id} A"]
    hv = compare_runs.hypervolume_per_run([a, b], [0.0, 0.0]).set_index("series")
    assert list(hv.index) == [f"#{a.id} A", "union of all"]
    assert hv.loc["union of all", "hypervolume"] == pytest.approx(0.35)  # A's, not the union's 0.39
    assert compare_runs.seed_attainment([a, b]) == []  # one run left: no group over seeds

    shown = compare_runs.points_frame([a, b], include_diverged=True)
    assert set(shown.series) == {f"#{a.id} A", f"#{b.id} B (diverged)"}
    counts = compare_runs.dominance_counts(compare_runs.point_sets(shown))
    assert counts.loc[f"#{a.id} A", f"#{b.id} B (diverged)"] == 3
    assert counts.loc[f"#{b.id} B (diverged)", f"#{a.id} A"] == 1
    assert compare_runs.hypervolume_per_run([a, b], [0.0, 0.0], include_diverged=True).set_index(
        "series").loc["union of all", "hypervolume"] == pytest.approx(0.39)
    assert len(compare_runs.seed_attainment([a, b], include_diverged=True)) == 1


def test_an_evaluation_of_a_diverged_run_counts_as_diverged(store):
    evaluation = _run(store, A, kind="evaluate", config={"source_run": 3, "source_status": "diverged"})
    assert compare_runs.is_diverged(evaluation)
    assert not compare_runs.is_diverged(_run(store, B, kind="evaluate", config={"source_run": 4,
                                                                                 "source_status": "finished"}))


def test_the_page_names_diverged_runs_and_says_how_many_are_hidden(store):
    run = _run(store, B, name="B")
    store.set_status(run.id, "diverged", "diverged at step 2: the KL to the reference is 84.15 nats per response")
    row = store.list_runs().iloc[0]
    assert compare_presenter.run_label(row).endswith("· DIVERGED")
    assert compare_presenter.diverged_toggle_label(1) == "Show diverged runs (1 diverged run hidden unless ticked)"
    assert "2 diverged runs hidden" in compare_presenter.diverged_toggle_label(2)
    note = compare_presenter.diverged_note([store.get_run(run.id)], shown=False)
    assert note.startswith("1 selected run is diverged and left off the fronts")
    assert f"run {run.id} (B): diverged at step 2: the KL" in note
    assert compare_presenter.diverged_note([], shown=False) == ""
