"""Independent ground truth for the tests: general-purpose scipy solvers that share no code
with mopo_core (SLSQP in the primal on softmax logits; nested brentq for MOPO-LB's fixed point,
with the tilt and the barrier written out here; an LP (HiGHS) for feasibility over all policies)."""
import numpy as np
from scipy.optimize import brentq, linprog, minimize


def _log_softmax_rows(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _softmax_rows(z):
    return np.exp(_log_softmax_rows(z))


def _centred(p, c):
    """Gradient wrt softmax logits of sum_y p[m, y] c[m, y] for fixed c: p * (c - E_p c)."""
    return p * (c - (p * c).sum(axis=1, keepdims=True))


def primal_slsqp(rates, reference, prompt_weights, thresholds, tau):
    """max V_0 - tau KL s.t. V_j >= b_j over softmax logits, with analytic gradients.

    rates (K, M, N) -> policy (M, N).
    """
    k, m, n = rates.shape
    nu = prompt_weights[:, None]
    log_ref = np.log(reference)

    def neg_objective(z):
        log_p = _log_softmax_rows(z.reshape(m, n))
        p = np.exp(log_p)
        c = rates[0] - tau * (log_p - log_ref)
        value = (nu * p * c).sum()
        return -value, -(nu * _centred(p, c)).ravel()

    def constraint(z, j):
        p = _softmax_rows(z.reshape(m, n))
        return (nu * p * rates[j]).sum() - thresholds[j - 1]

    def constraint_jac(z, j):
        p = _softmax_rows(z.reshape(m, n))
        return (nu * _centred(p, rates[j])).ravel()

    constraints = [{"type": "ineq", "fun": constraint, "jac": constraint_jac, "args": (j,)} for j in range(1, k)]
    best = None
    # Two starts (the reference, and its unconstrained tilt); restarts polish small probabilities.
    for z in (log_ref.ravel(), (log_ref + rates[0] / tau).ravel()):
        for _ in range(3):
            z = minimize(neg_objective, z, jac=True, method="SLSQP", constraints=constraints,
                         options={"ftol": 1e-16, "maxiter": 3000}).x
        feasible = all(constraint(z, j) >= -1e-9 for j in range(1, k))
        if feasible and (best is None or neg_objective(z)[0] < neg_objective(best)[0]):
            best = z
    return _softmax_rows(best.reshape(m, n))


def robust_bound_slsqp(z, reference, prompt_weights, eps):
    """min_Q E_x E_Q[z] s.t. E_x KL(Q || ref) <= eps, solved in the primal over logits of Q."""
    m, n = z.shape
    nu = prompt_weights

    def parts(u):
        q = _softmax_rows(u.reshape(m, n))
        kl = nu @ (q * (np.log(np.maximum(q, 1e-300)) - np.log(reference))).sum(axis=1)
        return q, kl

    res = minimize(lambda u: nu @ (parts(u)[0] * z).sum(axis=1), np.log(reference).ravel(), method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda u: eps - parts(u)[1]}],
                   options={"ftol": 1e-15, "maxiter": 2000})
    return float(res.fun)


def barrier_slack_reference(lam, sigma, delta):
    """The slack at which MOPO-LB's barrier has multiplier ``lam`` > 0, written from its definition:
    the barrier ``-sigma log(slack)`` has multiplier ``sigma / slack`` down to slack = delta, and
    its C^2 quadratic extension has multiplier ``sigma (2 delta - slack) / delta^2`` below."""
    lam = np.asarray(lam, dtype=float)
    return np.where(sigma / lam >= delta, sigma / lam, 2 * delta - lam * delta**2 / sigma)


def rates_reference(preferences, behaviour):
    """Win-rates ``w[k, m, i] = sum_j P_k[m, i, j] mu[m, j]`` written out: (K, M, N, N), (M, N) -> (K, M, N)."""
    return np.einsum("kmij,mj->kmi", np.asarray(preferences, dtype=float), np.asarray(behaviour, dtype=float))


def values_reference(policy, rates, prompt_weights):
    """``V_k(pi) = sum_m nu_m sum_y pi[m, y] w[k, m, y]`` written out: (M, N), (K, M, N), (M,) -> (K,)."""
    return np.einsum("m,mn,kmn->k", prompt_weights, np.atleast_2d(policy), rates)


def tilt_policy_reference(lam, rates, reference, tau):
    """``pi_lam ∝ pi_ref exp((w_0 + lam . w_sec) / tau)`` per prompt, written out (M, N). rates (K, M, N)."""
    logits = np.log(reference) + (rates[0] + np.tensordot(np.asarray(lam, dtype=float), rates[1:], axes=1)) / tau
    policy = np.exp(logits - logits.max(axis=1, keepdims=True))
    return policy / policy.sum(axis=1, keepdims=True)


def barrier_residual_reference(lam, rates, reference, prompt_weights, thresholds, tau, sigma, delta):
    """MOPO-LB's fixed-point residual ``V_j(pi_lam) - b_j - slack(lam_j)`` (J,) in slack units,
    with ``pi_lam ∝ pi_ref exp((w_0 + lam . w) / tau)`` per prompt written out here. rates (K, M, N)."""
    policy = tilt_policy_reference(lam, rates, reference, tau)
    values = np.einsum("m,mn,jmn->j", prompt_weights, policy, rates[1:])
    return values - np.asarray(thresholds, dtype=float) - barrier_slack_reference(lam, sigma, delta)


def barrier_fixed_point_nested(rates, reference, prompt_weights, thresholds, tau, sigma, delta):
    """MOPO-LB multipliers (J,) by nested one-dimensional root finding (scipy brentq).

    The fixed point solves ``r_j(lam) = V_j(pi_lam) - b_j - slack(lam_j) = 0`` for every j,
    where r is the gradient of a strictly convex function of lam. So, with lam_{j+1..J}
    solved for given lam_{1..j}, r_j is increasing in lam_j (it is the derivative of a
    partial minimum of a strictly convex function), and each level is a bracketed scalar root.
    V_j is a win-rate in [0, 1], so the root lies where the slack is in [-b_j - 1, 2 - b_j].
    rates (K, M, N).
    """
    b = np.asarray(thresholds, dtype=float)

    def multiplier(slack):  # the barrier's multiplier at this slack (inverse of barrier_slack_reference)
        return sigma / slack if slack >= delta else sigma * (2 * delta - slack) / delta**2

    def solve_from(level, fixed):
        """lam[level:] solving r_level.. = 0 given lam[:level] = fixed."""
        if level == b.size:
            return fixed

        def level_residual(x):
            lam = np.array(solve_from(level + 1, fixed + [x]))
            return barrier_residual_reference(lam, rates, reference, prompt_weights, b, tau, sigma, delta)[level]

        lo, hi = multiplier(2.0 - b[level]), multiplier(-b[level] - 1.0)
        x = brentq(level_residual, lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
        return solve_from(level + 1, fixed + [x])

    return np.array(solve_from(0, []))


def best_worst_slack_lp(rates, prompt_weights, thresholds):
    """``max over policies of min_j (V_j(pi) - b_j)`` by an LP (scipy HiGHS), and a maximiser (M, N).

    The thresholds are jointly attainable by some policy (with any reference of full support)
    exactly when this is >= 0. rates (K, M, N); thresholds (K - 1,). Variables: pi (M N) and t;
    maximise t s.t. t - sum_m nu_m pi_m . w_j,m <= -b_j, each pi_m on the simplex.
    """
    k, m, n = rates.shape
    b = np.asarray(thresholds, dtype=float)
    nu = np.asarray(prompt_weights, dtype=float)
    cost = np.zeros(m * n + 1)
    cost[-1] = -1.0
    secondary = np.vstack([(nu[:, None] * rates[j]).ravel() for j in range(1, k)])  # V_j = secondary[j-1] @ pi
    a_ub = np.hstack([-secondary, np.ones((k - 1, 1))])
    a_eq = np.hstack([np.kron(np.eye(m), np.ones((1, n))), np.zeros((m, 1))])
    res = linprog(cost, A_ub=a_ub, b_ub=-b, A_eq=a_eq, b_eq=np.ones(m),
                  bounds=[(0.0, 1.0)] * (m * n) + [(-2.0, 2.0)], method="highs")
    assert res.status == 0, res.message
    return float(res.x[-1]), res.x[:-1].reshape(m, n)
