"""Independent ground truth for the tests: general-purpose solvers that share no code with
the MOPO dual (scipy SLSQP in the primal on softmax logits)."""
import numpy as np
from scipy.optimize import minimize


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
