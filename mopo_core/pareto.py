"""Pareto tools: non-dominance, hypervolume, IGD+, dominance counts, and the exact front.

Conventions (as everywhere in the engine):

- Every objective is MAXIMISED. A set of points is an array ``(P, K)``.
- Win-rates ``w`` have shape ``(K, M, N)`` (objective, prompt, response): ``w[k, m, y]`` is
  response ``y``'s mean win-rate against the behaviour policy on objective ``k``;
  objective 0 is the primary, objectives ``1..K-1`` are the secondaries.
- Prompt weights ``nu`` ``(M,)`` sum to one. The value of a policy ``pi`` ``(M, N)`` is
  ``V_k = sum_m nu_m sum_y pi[m, y] w[k, m, y]``.

Indicators (non-dominance, hypervolume, IGD+) are moocore's, called with
``maximise=True``; the tests keep small independent numpy versions as a cross-check.

The exact unregularised front (``tau -> 0``) is the Pareto front of the attainable set
``{V(pi)}``, which is convex because ``V`` is linear in ``pi``. For ``K = 2`` it is computed
exactly as a polygonal chain (a Minkowski sum over prompts of per-prompt hulls); for
``K >= 3`` it is sampled by linear programs on a grid of thresholds.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import moocore
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import linprog

from mopo_core.validation import as_finite_array, check_prompt_weights, check_thresholds

#: HiGHS tolerances for the exact-front LPs (the LP is the ground truth in tests).
_LP_OPTIONS = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}


# --------------------------------------------------------------------------- input checks


def _check_points(points, name: str, n_objectives: int | None = None) -> np.ndarray:
    """Validate a point set and return it as a float array ``(P, K)``.

    An empty input is allowed: ``(0, K)``, or ``[]`` which becomes ``(0, n_objectives)``.
    """
    arr = as_finite_array(points, name)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, n_objectives or 0)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected shape (P, K), got {arr.shape}")
    if n_objectives is not None and arr.shape[1] != n_objectives:
        raise ValueError(f"{name}: expected K = {n_objectives} objectives, got {arr.shape[1]}")
    return arr


def _check_vector(value, name: str, length: int | None = None) -> np.ndarray:
    """Validate one point ``(K,)`` (for example a reference point)."""
    arr = as_finite_array(value, name)
    if arr.ndim != 1 or (length is not None and arr.shape[0] != length):
        expected = f"({length},)" if length is not None else "(K,)"
        raise ValueError(f"{name}: expected shape {expected}, got {arr.shape}")
    return arr


def _check_win_rates(w, prompt_weights) -> tuple[np.ndarray, np.ndarray]:
    """Validate win-rates ``(K, M, N)`` with ``K >= 2`` and prompt weights ``(M,)``."""
    w = as_finite_array(w, "w")
    if w.ndim != 3:
        raise ValueError(f"w: expected shape (K, M, N), got {w.shape}")
    k, m, n = w.shape
    if k < 2 or m < 1 or n < 1:
        raise ValueError(f"w: need K >= 2, M >= 1, N >= 1, got (K, M, N) = {w.shape}")
    return w, check_prompt_weights(prompt_weights, m)


# --------------------------------------------------------------------------- indicators


#: Differences below this (win-rate units) count as ties in dominance counts between methods.
DOMINANCE_TOL = 1e-9


def _dominance(a: np.ndarray, b: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """``(Pa, Pb)`` bool: ``a[i]`` dominates ``b[j]`` (``>= - tol`` everywhere, ``> + tol`` somewhere)."""
    diff = a[:, None, :] - b[None, :, :]
    return (diff >= -tol).all(axis=-1) & (diff > tol).any(axis=-1)


def dominates(a, b) -> bool:
    """Whether point ``a`` ``(K,)`` Pareto-dominates point ``b`` ``(K,)`` (maximised)."""
    a = _check_vector(a, "a")
    b = _check_vector(b, "b", len(a))
    return bool(_dominance(a[None], b[None])[0, 0])


def nondominated_mask(points) -> np.ndarray:
    """``(P,)`` bool: which rows of ``points`` ``(P, K)`` no other row dominates.

    Of several identical non-dominated rows only the FIRST copy is marked ``True``, so
    ``points[mask]`` is the non-dominated set without duplicates.
    """
    pts = _check_points(points, "points")
    if len(pts) == 0:
        return np.zeros(0, dtype=bool)
    return moocore.is_nondominated(pts, maximise=True, keep_weakly=False)


def hypervolume(points, reference_point) -> float:
    """Hypervolume dominated by ``points`` ``(P, K)`` and bounded below by ``reference_point``.

    Objectives are maximised. Points that are not strictly better than the reference in
    every objective contribute nothing; an empty set gives 0.0.
    """
    ref = _check_vector(reference_point, "reference_point")
    pts = _check_points(points, "points", len(ref))
    pts = pts[(pts > ref).all(axis=1)]
    if len(pts) == 0:
        return 0.0
    return float(moocore.hypervolume(pts, ref=ref, maximise=True))


def igd_plus(points, front) -> float:
    """IGD+ of ``points`` ``(P, K)`` against a reference ``front`` ``(F, K)`` (maximised).

    The mean over front points ``r`` of ``min_a ||max(r - a, 0)||_2``: zero when every front
    point is weakly dominated by some point of ``points``. Both sets must be non-empty.
    """
    ref = _check_points(front, "front")
    pts = _check_points(points, "points", ref.shape[1])
    for arr, name in ((pts, "points"), (ref, "front")):
        if len(arr) == 0:
            raise ValueError(f"{name}: IGD+ needs at least one point")
    return float(moocore.igd_plus(pts, ref=ref, maximise=True))


def dominance_matrix(point_sets: dict, tol: float = DOMINANCE_TOL) -> pd.DataFrame:
    """Pairwise dominance counts between named point sets ``{name: (P_i, K)}``.

    Entry ``[A, B]`` is the number of A's points that dominate at least one point of B
    (``>=`` in every objective and ``>`` in one, both up to ``tol``, so that two methods that
    find the same policy up to rounding do not "dominate" each other). The diagonal is 0.
    """
    sets = {name: _check_points(pts, f"point_sets[{name!r}]") for name, pts in point_sets.items()}
    ks = {arr.shape[1] for arr in sets.values() if len(arr)}
    if len(ks) > 1:
        raise ValueError(f"point_sets: all sets must have the same K, got {sorted(ks)}")
    names = list(sets)
    out = pd.DataFrame(0, index=pd.Index(names, name="A"), columns=pd.Index(names, name="B"))
    for a, b in itertools.permutations(names, 2):
        if len(sets[a]) and len(sets[b]):
            out.loc[a, b] = int(_dominance(sets[a], sets[b], tol).any(axis=1).sum())
    return out


# --------------------------------------------------------------------------- exact front


def attainable_max(w, prompt_weights) -> np.ndarray:
    """``(K,)``: the largest value of each objective over all policies, ``sum_m nu_m max_y w``."""
    w, nu = _check_win_rates(w, prompt_weights)
    return w.max(axis=2) @ nu


def lp_best_primary(w, prompt_weights, thresholds) -> tuple[float | None, np.ndarray | None]:
    """Best primary value under secondary thresholds, by linear programming (HiGHS).

    Solves ``max V_0(pi) s.t. V_j(pi) >= thresholds[j-1]`` for ``j = 1..K-1`` over all
    policies ``pi`` ``(M, N)`` (rows on the simplex). Returns ``(V_0, V)`` with ``V`` the
    optimal policy's full value vector ``(K,)``, or ``(None, None)`` when infeasible.
    """
    w, nu = _check_win_rates(w, prompt_weights)
    k, m, n = w.shape
    b = check_thresholds(thresholds, k - 1)
    coef = (w * nu[None, :, None]).reshape(k, m * n)  # V = coef @ pi.ravel()
    res = linprog(
        -coef[0],
        A_ub=-coef[1:],
        b_ub=-b,
        A_eq=sp.kron(sp.identity(m), np.ones((1, n)), format="csr"),
        b_eq=np.ones(m),
        bounds=(0, None),
        method="highs-ds",
        options=_LP_OPTIONS,
    )
    if res.status == 2:
        return None, None
    if res.status != 0:
        raise RuntimeError(f"linprog failed for thresholds {b.tolist()}: {res.message}")
    values = coef @ res.x
    return float(values[0]), values


@dataclass(frozen=True, eq=False)
class ExactFront:
    """The unregularised Pareto front of a finite instance.

    ``points`` ``(P, K)``: Pareto-optimal value vectors. For ``K = 2`` they are the exact
    ``vertices`` ``(V, 2)`` plus points interpolated along the edges, sorted by ascending
    secondary value (so descending primary). For ``K >= 3`` both are the non-dominated LP
    optima found on a threshold grid (a sample of the front).
    """

    points: np.ndarray
    vertices: np.ndarray

    @property
    def is_exact(self) -> bool:
        """True for ``K = 2``, where the front is known exactly as a polyline."""
        return self.vertices.shape[1] == 2

    def hypervolume(self, reference_point) -> float:
        """Hypervolume of the front above ``reference_point`` ``(K,)``.

        For ``K = 2`` it is the exact area dominated by the continuous polyline. For
        ``K >= 3`` it is the hypervolume of the sampled points: a LOWER BOUND on the true
        value (the front between samples is not counted).
        """
        ref = _check_vector(reference_point, "reference_point", self.vertices.shape[1])
        if self.is_exact:
            return _polyline_hypervolume(self.vertices[::-1], ref)
        return hypervolume(self.points, ref)


def exact_front(w, prompt_weights, n_points: int = 200) -> ExactFront:
    """The exact unregularised front for win-rates ``w`` ``(K, M, N)`` and weights ``(M,)``.

    ``K = 2``: the exact vertices of the attainable set's Pareto front (a Minkowski sum
    over prompts of the weighted per-prompt hulls), and ``max(n_points, V)`` points made of
    the vertices plus points spread along the edges in proportion to their length.
    ``K >= 3``: LP optima (:func:`lp_best_primary`) on a grid of about ``n_points``
    threshold vectors, each secondary spanning from its lowest value over the single-
    objective optima to its attainable maximum; dominated results are dropped.
    """
    w, nu = _check_win_rates(w, prompt_weights)
    if int(n_points) != n_points or n_points < 1:
        raise ValueError(f"n_points: must be a positive integer, got {n_points}")
    if w.shape[0] == 2:
        vertices = _front_vertices_2d(w, nu)
        return ExactFront(points=_densify(vertices, int(n_points)), vertices=vertices)
    points = _lp_grid_front(w, nu, int(n_points))
    return ExactFront(points=points, vertices=points)


def front_value(front: ExactFront, secondary_value: float) -> float | None:
    """Best primary value at a secondary value on a ``K = 2`` front, or ``None`` above the
    attainable secondary maximum. Below the front's smallest secondary it is the
    unconstrained primary maximum."""
    if not front.is_exact:
        raise ValueError(f"front: front_value needs a K = 2 front, got K = {front.vertices.shape[1]}")
    b = float(as_finite_array(secondary_value, "secondary_value"))
    secondary, primary = front.vertices[:, 1], front.vertices[:, 0]
    if b > secondary[-1]:
        return None
    return float(np.interp(b, secondary, primary))


def _prompt_chains(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper-right hull chains of every prompt's response points, for ``K = 2``.

    Returns ``(xy, group)``: ``xy`` ``(R, 2)`` (primary, secondary) hull vertices in order of
    increasing primary, prompt by prompt, and ``group`` ``(R,)`` their prompt index. Each
    chain runs from the prompt's best secondary to its best primary; its slopes are
    negative and strictly decreasing.
    """
    m = w.shape[1]
    # Per prompt: sort by primary descending (ties: secondary descending); a point is
    # non-dominated iff its secondary beats every point before it.
    order = np.lexsort((-w[1], -w[0]), axis=1)
    x = np.take_along_axis(w[0], order, axis=1)
    y = np.take_along_axis(w[1], order, axis=1)
    best_before = np.maximum.accumulate(np.concatenate([np.full((m, 1), -np.inf), y[:, :-1]], axis=1), axis=1)
    keep = (y > best_before)[:, ::-1]
    xy = np.stack([x[:, ::-1][keep], y[:, ::-1][keep]], axis=1)
    group = np.repeat(np.arange(m), keep.sum(axis=1))
    # Drop points on or below the segment joining their neighbours until the chain is
    # strictly concave. Such a point is never a vertex of the upper hull, so dropping all
    # of them at once leaves the hull unchanged; passes are vectorised over all prompts.
    while True:
        inner = np.flatnonzero((group[1:-1] == group[:-2]) & (group[1:-1] == group[2:])) + 1
        prev, mid, nxt = xy[inner - 1], xy[inner], xy[inner + 1]
        cross = (mid[:, 0] - prev[:, 0]) * (nxt[:, 1] - prev[:, 1]) - (mid[:, 1] - prev[:, 1]) * (nxt[:, 0] - prev[:, 0])
        drop = inner[cross >= 0]
        if len(drop) == 0:
            return xy, group
        xy, group = np.delete(xy, drop, axis=0), np.delete(group, drop)


def _front_vertices_2d(w: np.ndarray, nu: np.ndarray) -> np.ndarray:
    """Exact Pareto-front vertices ``(V, 2)`` for ``K = 2``, by ascending secondary.

    The attainable set is ``sum_m nu_m conv{(w0[m, y], w1[m, y])}``; its front starts at
    the sum of the per-prompt best-secondary points and follows all per-prompt edges,
    scaled by ``nu_m``, merged in order of decreasing slope.
    """
    xy, group = _prompt_chains(w)
    first = np.concatenate([[True], group[1:] != group[:-1]])
    start = nu @ xy[first]
    same = ~first[1:]
    edges = (xy[1:] - xy[:-1])[same] * nu[group[1:][same], None]
    edges = edges[edges[:, 0] > 0]  # prompts with zero weight add no edge
    edges = edges[np.argsort(edges[:, 1] / edges[:, 0], kind="stable")[::-1]]
    vertices = np.vstack([start, start + np.cumsum(edges, axis=0)])
    return _drop_collinear(vertices)[::-1]


def _drop_collinear(chain: np.ndarray) -> np.ndarray:
    """Remove interior vertices of a polyline ``(V, 2)`` where two edges of equal slope
    meet (edges from different prompts that are parallel)."""
    if len(chain) < 3:
        return chain
    d = np.diff(chain, axis=0)
    cross = d[:-1, 0] * d[1:, 1] - d[:-1, 1] * d[1:, 0]
    scale = np.linalg.norm(d[:-1], axis=1) * np.linalg.norm(d[1:], axis=1)
    bend = np.abs(cross) > 1e-12 * scale
    return chain[np.concatenate([[True], bend, [True]])]


def _densify(vertices: np.ndarray, n_points: int) -> np.ndarray:
    """The vertices ``(V, K)`` plus ``n_points - V`` points spread along the polyline's
    edges in proportion to edge length, in polyline order."""
    extra = n_points - len(vertices)
    if extra <= 0 or len(vertices) < 2:
        return vertices.copy()
    lengths = np.linalg.norm(np.diff(vertices, axis=0), axis=1)
    share = extra * lengths / lengths.sum()
    counts = np.floor(share).astype(int)
    counts[np.argsort(counts - share)[: extra - counts.sum()]] += 1  # largest remainders
    pieces = [vertices[:1]]
    for a, b, c in zip(vertices[:-1], vertices[1:], counts):
        t = np.arange(1, c + 2)[:, None] / (c + 1)
        pieces.append(a + t * (b - a))
    return np.vstack(pieces)


def _polyline_hypervolume(chain: np.ndarray, ref: np.ndarray) -> float:
    """Exact area dominated by a 2-D Pareto polyline and above ``ref`` ``(2,)``.

    ``chain`` ``(V, 2)`` holds (primary, secondary) vertices by increasing primary (so
    decreasing secondary). The dominated region is ``{x <= x_end, y <= g(x)}`` where ``g``
    is the chain, extended to the left by its highest secondary. The area is the integral
    of ``max(g(x) - ref_y, 0)`` over ``x`` in ``[ref_x, x_end]``, piecewise linear so exact.
    """
    x, y = chain[:, 0], chain[:, 1]
    if ref[0] >= x[-1]:
        return 0.0
    inside = x > ref[0]
    xs = np.concatenate([[ref[0]], x[inside]])
    ys = np.concatenate([[np.interp(ref[0], x, y)], y[inside]])  # interp holds y[0] left of x[0]
    h0, h1, dx = ys[:-1] - ref[1], ys[1:] - ref[1], np.diff(xs)
    both = (h0 >= 0) & (h1 >= 0)
    one = h0 * h1 < 0  # the segment crosses ref_y: only its positive part counts
    area = np.sum(dx[both] * (h0[both] + h1[both]) / 2)
    hp, hn = np.maximum(h0[one], h1[one]), np.minimum(h0[one], h1[one])
    area += np.sum(dx[one] * hp**2 / (2 * (hp - hn)))
    return float(area)


def _lp_grid_front(w: np.ndarray, nu: np.ndarray, n_points: int) -> np.ndarray:
    """Non-dominated LP optima ``(P, K)`` on a threshold grid, for ``K >= 3``.

    Secondary ``j`` spans from its smallest value among the K greedy single-objective
    optima (below that a threshold never binds on the front) to its attainable maximum,
    with ``ceil(n_points ** (1 / (K-1)))`` values per secondary.
    """
    k, m, _ = w.shape
    greedy = np.argmax(w, axis=2)  # (K, M): the best response per objective and prompt
    payoff = w[:, np.arange(m), greedy] @ nu  # payoff[k, i] = V_k(greedy policy for i)
    per_axis = int(np.ceil(n_points ** (1.0 / (k - 1)) - 1e-9))
    axes = [np.linspace(payoff[j].min(), payoff[j, j], per_axis) for j in range(1, k)]
    values = [lp_best_primary(w, nu, b)[1] for b in itertools.product(*axes)]
    points = np.array([v for v in values if v is not None]).reshape(-1, k)
    return points[nondominated_mask(points)]
