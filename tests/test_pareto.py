"""Pareto indicators (against small numpy versions of their definitions) and the exact
unregularised front (against linear programs). All objectives are maximised."""
from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mopo_core.pareto import (
    attainable_max,
    dominance_matrix,
    dominates,
    exact_front,
    front_value,
    hypervolume,
    igd_plus,
    lp_best_primary,
    nondominated_mask,
)

# --------------------------------------------------------------------------- numpy references


def ref_nondominated(points: np.ndarray) -> np.ndarray:
    """O(P^2): not dominated by any row, and not a repeat of an earlier row."""
    p = len(points)
    keep = np.ones(p, dtype=bool)
    for i in range(p):
        for j in range(p):
            ge, gt = np.all(points[j] >= points[i]), np.any(points[j] > points[i])
            if (ge and gt) or (j < i and np.array_equal(points[j], points[i])):
                keep[i] = False
    return keep


def ref_hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact HV by summing the cells of the grid spanned by all coordinates: a cell counts
    when some point weakly dominates its upper corner."""
    pts = points[(points > ref).all(axis=1)]
    if len(pts) == 0:
        return 0.0
    grids = [np.unique(np.concatenate([[ref[k]], pts[:, k]])) for k in range(points.shape[1])]
    total = 0.0
    for cell in itertools.product(*(range(len(g) - 1) for g in grids)):
        upper = np.array([g[i + 1] for g, i in zip(grids, cell)])
        if (pts >= upper).all(axis=1).any():
            total += np.prod([g[i + 1] - g[i] for g, i in zip(grids, cell)])
    return float(total)


def ref_igd_plus(points: np.ndarray, front: np.ndarray) -> float:
    shortfall = np.maximum(front[:, None, :] - points[None, :, :], 0.0)
    return float(np.linalg.norm(shortfall, axis=2).min(axis=1).mean())


def random_instance(seed: int, k: int, m: int, n: int):
    rng = np.random.default_rng(seed)
    return rng.random((k, m, n)), rng.dirichlet(np.ones(m))


# --------------------------------------------------------------------------- indicators


def test_hypervolume_2d_staircase_by_hand():
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [4.0, 0.0]])  # the last adds nothing
    assert hypervolume(pts, [0.0, 0.0]) == pytest.approx(3 + 2 + 1)
    assert hypervolume(pts, [1.5, 0.5]) == pytest.approx(0.5 * 1.5 + 1 * 0.5)
    assert hypervolume(np.zeros((0, 2)), [0.0, 0.0]) == 0.0
    assert hypervolume([], [0.0, 0.0]) == 0.0
    assert hypervolume(pts, [5.0, 5.0]) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_hypervolume_3d_matches_grid_sum(seed):
    rng = np.random.default_rng(seed)
    pts = rng.random((8, 3))
    ref = np.array([0.1, 0.2, 0.0])
    assert hypervolume(pts, ref) == pytest.approx(ref_hypervolume(pts, ref), rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_igd_plus_matches_definition(seed):
    rng = np.random.default_rng(seed)
    pts, front = rng.random((7, 3)), rng.random((11, 3))
    assert igd_plus(pts, front) == pytest.approx(ref_igd_plus(pts, front), rel=1e-12)
    assert igd_plus(front, front) == 0.0


def test_nondominated_mask_matches_loop_and_keeps_first_duplicate():
    rng = np.random.default_rng(0)
    pts = rng.integers(0, 4, size=(40, 3)).astype(float)  # many ties and duplicates
    np.testing.assert_array_equal(nondominated_mask(pts), ref_nondominated(pts))
    np.testing.assert_array_equal(nondominated_mask([[1, 1], [1, 1], [0, 2]]), [True, False, True])
    assert nondominated_mask(np.zeros((0, 2))).shape == (0,)


def test_dominates():
    assert dominates([1, 2], [1, 1])
    assert not dominates([1, 1], [1, 1])
    assert not dominates([2, 0], [1, 1])
    with pytest.raises(ValueError, match="b: expected shape"):
        dominates([1, 2], [1, 2, 3])


def test_dominance_matrix_small_example():
    sets = {
        "A": np.array([[2.0, 2.0], [0.0, 0.0]]),
        "B": np.array([[1.0, 1.0], [3.0, 0.0]]),
        "C": np.array([[1.0, 1.0]]),
    }
    mat = dominance_matrix(sets)
    assert list(mat.index) == list(mat.columns) == ["A", "B", "C"]
    # A's (2,2) dominates B's (1,1) and C's (1,1); both of B's points dominate A's (0,0);
    # C's (1,1) dominates A's (0,0) but not B's equal (1,1).
    expected = [[0, 1, 1], [2, 0, 0], [1, 0, 0]]
    np.testing.assert_array_equal(mat.to_numpy(), expected)
    with pytest.raises(ValueError, match="same K"):
        dominance_matrix({"A": np.ones((1, 2)), "B": np.ones((1, 3))})


def test_inputs_are_validated_with_named_arguments():
    with pytest.raises(ValueError, match="points: non-finite"):
        hypervolume([[np.nan, 1.0]], [0.0, 0.0])
    with pytest.raises(ValueError, match="points: expected K = 2"):
        hypervolume([[1.0, 1.0, 1.0]], [0.0, 0.0])
    with pytest.raises(ValueError, match="reference_point"):
        hypervolume([[1.0, 1.0]], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="points: IGD\\+ needs"):
        igd_plus(np.zeros((0, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="w: expected shape"):
        attainable_max(np.ones((2, 3)), None)
    with pytest.raises(ValueError, match="prompt_weights"):
        attainable_max(np.ones((2, 3, 4)), [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="thresholds"):
        lp_best_primary(np.ones((3, 2, 2)), None, [0.5])


point_sets = arrays(np.float64, st.tuples(st.integers(1, 12), st.just(3)), elements=st.floats(0, 1, width=32))


@settings(max_examples=30, deadline=None)
@given(pts=point_sets, extra=arrays(np.float64, 3, elements=st.floats(0, 1, width=32)))
def test_hypervolume_monotone_when_adding_a_point(pts, extra):
    ref = np.zeros(3)
    assert hypervolume(np.vstack([pts, extra]), ref) >= hypervolume(pts, ref) - 1e-12


@settings(max_examples=30, deadline=None)
@given(pts=point_sets)
def test_hypervolume_of_nondominated_subset_equals_all(pts):
    ref = np.full(3, -0.1)
    assert hypervolume(pts[nondominated_mask(pts)], ref) == pytest.approx(hypervolume(pts, ref), rel=1e-12, abs=1e-15)


# --------------------------------------------------------------------------- exact front


def test_attainable_max():
    w, nu = random_instance(0, 3, 4, 5)
    np.testing.assert_allclose(attainable_max(w, nu), [(w[k].max(axis=1) * nu).sum() for k in range(3)])


def test_lp_best_primary_infeasible_and_unconstrained():
    w, nu = random_instance(1, 2, 3, 4)
    top = attainable_max(w, nu)
    assert lp_best_primary(w, nu, [top[1] + 1e-3]) == (None, None)
    best, values = lp_best_primary(w, nu, [-1.0])
    assert best == pytest.approx(top[0], abs=1e-12)
    assert values.shape == (2,) and values[0] == best


@pytest.mark.parametrize("seed,m,n", [(0, 1, 6), (1, 3, 5), (2, 6, 8), (3, 10, 3)])
def test_two_objective_vertices_are_lp_optima(seed, m, n):
    w, nu = random_instance(seed, 2, m, n)
    front = exact_front(w, nu)
    top = attainable_max(w, nu)
    assert np.all(np.diff(front.vertices[:, 1]) > 0)
    assert front.vertices[-1, 1] == pytest.approx(top[1], abs=1e-12)
    assert front.vertices[0, 0] == pytest.approx(top[0], abs=1e-12)
    for primary, secondary in front.vertices:
        assert lp_best_primary(w, nu, [secondary])[0] == pytest.approx(primary, abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_two_objective_polyline_equals_lp_at_random_thresholds(seed):
    rng = np.random.default_rng(100 + seed)
    m, n = rng.integers(1, 8, size=2) + 1
    w, nu = random_instance(seed, 2, m, n)
    front = exact_front(w, nu)
    for b in rng.uniform(w[1].min(), w[1].max(), size=15):
        lp_value, _ = lp_best_primary(w, nu, [b])
        if lp_value is None:
            assert front_value(front, b) is None
        else:
            assert front_value(front, b) == pytest.approx(lp_value, abs=1e-9)


def test_two_objective_points_lie_on_the_front():
    w, nu = random_instance(7, 2, 5, 6)
    front = exact_front(w, nu, n_points=123)
    assert front.points.shape == (123, 2)
    assert np.all(np.diff(front.points[:, 1]) >= 0)
    assert nondominated_mask(front.points).all()
    for primary, secondary in front.points[::10]:
        assert front_value(front, secondary) == pytest.approx(primary, abs=1e-12)


def test_two_objective_hypervolume_by_hand():
    w = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # one prompt: the front is the segment (1,0)-(0,1)
    front = exact_front(w, None)
    assert front.hypervolume([0.0, 0.0]) == pytest.approx(0.5)
    assert front.hypervolume([0.5, 0.0]) == pytest.approx(0.125)
    assert front.hypervolume([0.0, 0.5]) == pytest.approx(0.125)
    assert front.hypervolume([-1.0, -1.0]) == pytest.approx(4 - 0.5)
    assert front.hypervolume([1.0, 0.0]) == 0.0
    assert front.hypervolume([0.0, 1.0]) == 0.0


@pytest.mark.parametrize("ref", [[0.0, 0.0], [0.55, 0.3], [0.2, 0.75], [0.8, 0.8]])
def test_two_objective_hypervolume_matches_dense_sampling(ref):
    w, nu = random_instance(3, 2, 6, 8)
    exact = exact_front(w, nu).hypervolume(ref)
    dense = hypervolume(exact_front(w, nu, n_points=20_000).points, ref)
    assert exact >= dense - 1e-12
    assert exact == pytest.approx(dense, rel=1e-3, abs=1e-9)


def test_degenerate_fronts():
    w = np.array([[[0.9, 0.1]], [[0.8, 0.2]]])  # one response is best on both objectives
    front = exact_front(w, None, n_points=5)
    np.testing.assert_allclose(front.vertices, [[0.9, 0.8]])
    assert front_value(front, 0.0) == pytest.approx(0.9)
    assert front_value(front, 0.81) is None
    w, _ = random_instance(4, 2, 3, 4)
    with_zero = exact_front(w, [0.5, 0.0, 0.5]).vertices
    without = exact_front(w[:, [0, 2]], [0.5, 0.5]).vertices
    np.testing.assert_allclose(with_zero, without, atol=1e-12)


def test_two_objective_front_is_fast_at_scale():
    w, nu = random_instance(0, 2, 256, 1000)
    exact_front(w, nu)
    start = time.perf_counter()
    front = exact_front(w, nu)
    assert time.perf_counter() - start < 0.5
    np.testing.assert_allclose(front.vertices[-1], [lp_value_at_top(w, nu), attainable_max(w, nu)[1]], atol=1e-12)


def lp_value_at_top(w, nu) -> float:
    """Best primary when the secondary is at its maximum: per prompt, the best primary
    among the responses with the best secondary."""
    best_secondary = w[1] == w[1].max(axis=1, keepdims=True)
    return float(np.where(best_secondary, w[0], -np.inf).max(axis=1) @ nu)


def test_three_objective_front_points_are_lp_optima():
    w, nu = random_instance(5, 3, 3, 4)
    front = exact_front(w, nu, n_points=36)
    assert not front.is_exact and front.points.shape[1] == 3
    assert nondominated_mask(front.points).all()
    for point in front.points[:: max(1, len(front.points) // 8)]:
        assert lp_best_primary(w, nu, point[1:])[0] == pytest.approx(point[0], abs=1e-9)
    ref = np.zeros(3)
    hv = front.hypervolume(ref)
    assert 0 < hv <= np.prod(attainable_max(w, nu) - ref)
    with pytest.raises(ValueError, match="front: front_value needs a K = 2"):
        front_value(front, 0.5)


def test_dominance_matrix_treats_rounding_differences_as_ties():
    a = np.array([[0.5, 0.6]])
    same_up_to_rounding = a + np.array([[1e-12, 0.0]])
    counts = dominance_matrix({"a": a, "b": same_up_to_rounding})
    assert counts.loc["b", "a"] == 0 and counts.loc["a", "b"] == 0
    clearly_better = a + np.array([[1e-6, 0.0]])
    assert dominance_matrix({"a": a, "c": clearly_better}).loc["c", "a"] == 1
