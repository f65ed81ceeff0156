"""Independent ground truth for the robust (KL-ball) problem of MOPO.md section 4: the primal
written as a conic program for cvxpy and solved by Clarabel (exponential cones). Shares no code
with mopo_core.

For a policy pi, LB_j(pi) = max_{chi >= 0} -chi E_x log E_ref exp(-pi q_j / (ref chi)) - chi eps.
The constraint ``T >= chi log sum_y ref_y exp(-a_y / chi)`` is written as
``sum_y ref_y u_y <= chi`` with ``u_y >= chi exp((-a_y - T) / chi)``, an exponential cone.
"""
import cvxpy as cp
import numpy as np

#: Clarabel's tolerances, tighter than its defaults so the answers are good to ~1e-8.
CLARABEL = dict(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11, tol_ktratio=1e-9,
                max_iter=400)


def _robust_bounds(policy, secondary, reference, prompt_weights, eps):
    """Expressions h_j (J,) of the robust bounds (each a lower bound on LB_j, tight at the optimum
    over chi) and the cone constraints that define them."""
    j_count, m, n = secondary.shape
    chi = cp.Variable(j_count, nonneg=True)
    log_terms = cp.Variable((j_count, m))
    cones, bounds = [], []
    for j in range(j_count):
        for p in range(m):
            support = reference[p] > 0
            a = cp.multiply(secondary[j, p, support] / reference[p, support], policy[p, support])
            u = cp.Variable(int(support.sum()))
            cones.append(cp.constraints.ExpCone(-a - log_terms[j, p], chi[j] * np.ones(u.size), u))
            cones.append(reference[p, support] @ u <= chi[j])
        bounds.append(-prompt_weights @ log_terms[j] - eps * chi[j])
    return bounds, cones


def _policy_variable(reference):
    """A policy (M, N) on the reference's support and its constraints."""
    policy = cp.Variable(reference.shape, nonneg=True)
    constraints = [cp.sum(policy, axis=1) == 1]
    if np.any(reference == 0):
        constraints.append(policy[reference == 0] == 0)
    return policy, constraints


def robust_primal_cvxpy(primary, secondary, reference, prompt_weights, thresholds, tau, eps):
    """max V_0 - tau KL s.t. LB_j >= b_j over all policies. primary (M, N), secondary (J, M, N).

    Returns (policy (M, N), objective value, accurate): accurate is False when Clarabel stopped
    short of its tolerances ("optimal_inaccurate"), (None, None, False) when it found no solution.
    """
    policy, simplex = _policy_variable(reference)
    bounds, cones = _robust_bounds(policy, secondary, reference, prompt_weights, eps)
    support = reference > 0
    value = cp.sum(cp.multiply(prompt_weights[:, None] * primary, policy))
    weights = np.broadcast_to(prompt_weights[:, None], reference.shape)[support]
    kl = weights @ cp.rel_entr(policy[support], reference[support])
    problem = cp.Problem(cp.Maximize(value - tau * kl),
                         simplex + cones + [bounds[j] >= thresholds[j] for j in range(len(bounds))])
    problem.solve(**CLARABEL)
    if policy.value is None:
        return None, None, False
    return np.clip(policy.value, 0.0, None), float(problem.value), problem.status == cp.OPTIMAL


def robust_maximum_cvxpy(secondary_j, reference, prompt_weights, eps):
    """The largest robust value max_pi LB(pi) of one secondary (M, N) over all policies."""
    policy, simplex = _policy_variable(reference)
    bounds, cones = _robust_bounds(policy, secondary_j[None], reference, prompt_weights, eps)
    problem = cp.Problem(cp.Maximize(bounds[0]), simplex + cones)
    problem.solve(**CLARABEL)
    return float(problem.value)


def robust_margin_cvxpy(secondary, reference, prompt_weights, thresholds, eps):
    """The robust Chebyshev margin max_pi min_j LB_j(pi) - b_j over all policies (> 0: strictly
    attainable thresholds)."""
    policy, simplex = _policy_variable(reference)
    bounds, cones = _robust_bounds(policy, secondary, reference, prompt_weights, eps)
    margin = cp.Variable()
    problem = cp.Problem(cp.Maximize(margin),
                         simplex + cones + [bounds[j] - thresholds[j] >= margin for j in range(len(bounds))])
    problem.solve(**CLARABEL)
    return float(problem.value)
