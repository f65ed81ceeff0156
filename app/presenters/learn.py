"""Engine helpers for the Learn page's walk-through (MOPO.md sections 1-3 and 7).

Small pure functions that turn one two-objective instance into the tables the walk-through
draws. Nothing here re-implements the method: the tilt, its values and the dual come from
:class:`mopo_core.tabular.solver.TiltFamily`, and the dual steps from
``solve_tabular(method="projected_gradient")``'s trace. No Streamlit here.

Every function takes ``preferences`` either as an array ((2, N, N) for one prompt or
(2, M, N, N)) with optional ``reference`` / ``behaviour`` (None: uniform; (N,) or (M, N)),
or as an already validated :class:`mopo_core.tabular.solver.TabularProblem` (then ``reference`` and
``behaviour`` must be None). The walk-through has one primary and one secondary objective
(K = 2); other K raise ``ValueError``.

Column names (all tables are pandas DataFrames, ready for CSV / JSON export):
    tilt_table      response, reference, w_0, w_1, score, tilted
    tilt_values     lambda, V_primary, V_secondary, kl
    dual_path       step, lambda, V_primary, V_secondary, threshold, slack, dual, kl
    tau_effect      tau, lambda, V_primary, V_secondary, threshold, slack, kl, objective, feasible
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from mopo_core.tabular.solver import TabularProblem, TiltFamily, _default_step_size
from mopo_core.validation import as_finite_array, check_nonnegative, check_positive

#: The yes/no questions of the capability table, in column order.
QUESTIONS: tuple[str, ...] = (
    "Needs a reward model?",
    "One model per weight?",
    "Meets a user threshold?",
    "Works with intransitive preferences?",
    "Uses KL to a reference?",
)

#: Short verdicts used in :func:`capability_summary`.
VERDICTS: tuple[str, ...] = ("Yes", "No", "Partly", "n/a")

# (method, one (verdict, reason) per question). Consistent with MOPO.md section 7, SYNTHETIC.md and
# mopo_core.tabular.baselines (where the project's tabular version of a method differs from its paper, the
# reason says so).
_CAPABILITY_ROWS = [
    ("MOPO (this project)", (
        ("No", "it uses pairwise preferences directly, through win-rates against the behaviour policy."),
        ("No", "one policy per threshold vector; the multiplier λ is found by the dual, not guessed."),
        ("Yes", ("whenever the threshold is attainable (an unattainable one is reported, with the best attainable "
                "value). With finite data it is met on the estimated win-rates; the robust ε option guards "
                "against noise.")),
        ("Yes", "a win-rate is defined for any preference matrix (cyclic, deterministic, mixtures)."),
        ("Yes", "τ · KL(π ‖ π_ref)."),
    )),
    ("DPO (primary only)", (
        ("Partly", "no separate model, but it assumes Bradley–Terry: the policy is an implicit reward model."),
        ("n/a", "one objective, no trade-off."),
        ("No", "it optimises the primary only; a secondary threshold is met only when the objectives agree."),
        ("No", ("Bradley–Terry cannot fit cyclic preferences, and on deterministic (0/1) data its optimum "
               "ignores the KL term.")),
        ("Yes", "through β = τ (ineffective on deterministic data)."),
    )),
    ("IPO (primary only)", (
        ("No", "its optimum tilts π_ref by the primary's win-rate."),
        ("n/a", "one objective, no trade-off."),
        ("No", "it optimises the primary only."),
        ("Yes", "its optimum π_ref · exp(w_0/τ) uses win-rates, defined for any preferences."),
        ("Yes", "τ · KL(π ‖ π_ref)."),
    )),
    ("MODPO / weighted DPO", (
        ("Yes", "a fitted (Bradley–Terry) reward model per secondary objective, used as a margin."),
        ("Yes", "one training run per weight vector."),
        ("No", "the user picks a weight, not a threshold, and searches a grid for one that meets it."),
        ("No", "Bradley–Terry on the primary and on the secondaries' rewards."),
        ("Yes", "β = τ, as in DPO."),
    )),
    ("Scalarised IPO", (
        ("No", "IPO on a weighted mix of the objectives' preferences."),
        ("Yes", "one training run per weight vector."),
        ("No", ("weights, not thresholds. With exact preferences its policies are the MOPO family (the same "
               "tilt), but which weight meets a threshold is left to a grid search.")),
        ("Yes", "it works on win-rates."),
        ("Yes", "τ · KL(π ‖ π_ref)."),
    )),
    ("Rewarded Soups", (
        ("Yes", ("in its paper, one RL run per reward model. This project trains each objective's policy with "
                "DPO instead, which still assumes Bradley–Terry.")),
        ("No", "one model per objective; the weights are interpolated after training (cheap per weight)."),
        ("No", "interpolation weights, not thresholds."),
        ("No", "each expert assumes a reward (Bradley–Terry)."),
        ("Yes", "through each expert's training (β = τ)."),
    )),
    ("Safe-RLHF reward Lagrangian", (
        ("Yes", "a Bradley–Terry reward (or cost) model per objective."),
        ("No", "one policy per threshold; a Lagrange multiplier is learned, as in MOPO."),
        ("Partly", ("on the reward models' scale, so on the true preferences only when Bradley–Terry fits (this "
                   "project's suite shows misses on cyclic and mixture, and on multi-prompt data).")),
        ("No", "its rewards misfit cyclic preferences."),
        ("Yes", "a KL penalty to the reference (PPO in the original)."),
    )),
    ("RiC (Rewards-in-Context)", (
        ("Yes", "reward models score the data, and the scores are written into the prompt."),
        ("No", "one model conditioned on the desired rewards serves every preference."),
        ("No", ("it conditions on desired reward values; nothing enforces a constraint. (Described from its "
               "paper; not run in this project's suite.)")),
        ("No", "it needs a scalar reward per objective."),
        ("No", "no explicit KL term: supervised fine-tuning on reward-conditioned data."),
    )),
]

#: Methods (rows) × :data:`QUESTIONS` (columns): short plain-language answers, each
#: "Verdict: reason", consistent with MOPO.md section 7 and SYNTHETIC.md. First column "Method".
#: Use :func:`capabilities` for a copy to modify, :func:`capability_summary` for the verdicts alone.
CAPABILITIES: pd.DataFrame = pd.DataFrame(
    [(name, *(f"{verdict}: {reason}" for verdict, reason in answers)) for name, answers in _CAPABILITY_ROWS],
    columns=["Method", *QUESTIONS],
)


def capabilities() -> pd.DataFrame:
    """A fresh copy of :data:`CAPABILITIES` (full answers)."""
    return CAPABILITIES.copy()


def capability_summary() -> pd.DataFrame:
    """The same table with the one-word verdicts only (one of :data:`VERDICTS` per cell)."""
    return pd.DataFrame([(name, *(verdict for verdict, _ in answers)) for name, answers in _CAPABILITY_ROWS],
                        columns=["Method", *QUESTIONS])


# ----------------------------------------------------------------------------- inputs


def as_problem(preferences, reference=None, behaviour=None) -> TabularProblem:
    """A validated two-objective :class:`TabularProblem` from arrays, or the problem itself."""
    if isinstance(preferences, TabularProblem):
        if reference is not None or behaviour is not None:
            raise ValueError("reference/behaviour: pass them to TabularProblem.build, not with a built problem")
        problem = preferences
    else:
        problem = TabularProblem.build(preferences, reference, behaviour)
    k = problem.rates.shape[0]
    if k != 2:
        raise ValueError(f"preferences: the walk-through needs K = 2 objectives (a primary and one secondary), "
                         f"got K = {k}")
    return problem


def _family(problem: TabularProblem, tau) -> TiltFamily:
    return problem.family(check_positive(tau, "tau"))


def _lambda(value, name: str = "lam") -> np.ndarray:
    """One multiplier (K = 2) as a (1,) array; a scalar or a length-1 array, >= 0."""
    arr = as_finite_array(value, name).reshape(-1)
    if arr.size != 1:
        raise ValueError(f"{name}: expected one multiplier (one secondary objective), got {arr.size}")
    return np.array([check_nonnegative(arr[0], name)])


def _values(family: TiltFamily, lam: np.ndarray) -> tuple[float, float, float]:
    """(V_primary, V_secondary, KL) of the tilt pi_lam."""
    log_pi, pi, _ = family.log_policy(lam)
    nu = family.prompt_weights
    v0 = float(nu @ (pi * family.primary).sum(axis=1))
    v1 = float(nu @ (pi * family.secondary[0]).sum(axis=1))
    with np.errstate(invalid="ignore"):
        kl = float(nu @ np.where(pi > 0, pi * (log_pi - family.log_reference), 0.0).sum(axis=1))
    return v0, v1, kl


# ----------------------------------------------------------------------------- tables


def tilt_table(preferences, lam, tau, reference=None, behaviour=None, prompt: int = 0) -> pd.DataFrame:
    """Per response of one prompt: the reference probability, the win-rates w_0 (primary) and
    w_1 (secondary) against the behaviour policy, the score ``s_lam = w_0 + lam * w_1`` and the
    tilted probability ``pi_lam = pi_ref exp(s_lam / tau) / Z`` (MOPO.md section 3).

    lam >= 0, tau > 0; prompt in [0, M). Columns: response, reference, w_0, w_1, score, tilted.
    """
    problem = as_problem(preferences, reference, behaviour)
    family = _family(problem, tau)
    lam = _lambda(lam)
    m = problem.rates.shape[1]
    if int(prompt) != prompt or not 0 <= prompt < m:
        raise ValueError(f"prompt: expected an integer in [0, {m}), got {prompt!r}")
    tilted = family.policy(lam)[prompt]
    w0, w1 = problem.rates[0, prompt], problem.rates[1, prompt]
    return pd.DataFrame({
        "response": np.arange(w0.size),
        "reference": problem.reference[prompt],
        "w_0": w0,
        "w_1": w1,
        "score": w0 + lam[0] * w1,
        "tilted": tilted,
    })


def tilt_values(preferences, lambdas, tau, reference=None, behaviour=None) -> pd.DataFrame:
    """Values and KL of the tilt ``pi_lam`` for each lam in ``lambdas`` (all >= 0): the curve the
    MOPO family traces on the value plane. Columns: lambda, V_primary, V_secondary, kl."""
    problem = as_problem(preferences, reference, behaviour)
    family = _family(problem, tau)
    grid = as_finite_array(lambdas, "lambdas").reshape(-1)
    if (grid < 0).any():
        raise ValueError(f"lambdas: multipliers must be >= 0, got {grid[grid < 0][0]}")
    rows = [(lam, *_values(family, np.array([lam]))) for lam in grid]
    return pd.DataFrame(rows, columns=["lambda", "V_primary", "V_secondary", "kl"])


def default_step_size(preferences, tau, reference=None, behaviour=None) -> float:
    """The solver's default projected-gradient step ``1/L``, L a bound on the dual's curvature."""
    problem = as_problem(preferences, reference, behaviour)
    return float(_default_step_size(_family(problem, tau)))


def dual_path(preferences, threshold, tau, step_size=None, n_steps: int = 30, reference=None, behaviour=None,
              initial_multiplier: float = 0.0) -> pd.DataFrame:
    """The paper's projected-gradient dual update, one row per step (MOPO.md section 3):

        lam_{t+1} = max(0, lam_t - step_size * (V_1(pi_lam_t) - b))

    run by ``solve_tabular(method="projected_gradient")`` for ``n_steps`` steps from
    ``initial_multiplier`` (default step size: the solver's safe 1/L). Rows t = 0..n_steps:
    lambda, the tilt's values V_primary and V_secondary, the threshold b enforced, the
    constraint slack ``V_secondary - b`` (which is the dual gradient), the dual value
    ``g(lam) = tau log sum pi_ref exp(s_lam / tau) - lam b`` and the KL to the reference.
    Once the update reaches a fixed point the solver stops; the remaining rows repeat it
    (which is what further updates would give).

    An unattainable threshold is replaced, as in the solver, by the nearest attainable one
    (``threshold`` column); ``df.attrs`` holds requested_threshold, feasible, step_size and
    lambda_star (the exact multiplier from the Newton solver, for comparison).
    """
    problem = as_problem(preferences, reference, behaviour)
    tau = check_positive(tau, "tau")
    if isinstance(n_steps, bool) or int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps: must be a positive integer, got {n_steps!r}")
    n_steps = int(n_steps)
    family = _family(problem, tau)
    eta = _default_step_size(family) if step_size is None else check_positive(step_size, "step_size")
    lam0 = _lambda(initial_multiplier, "initial_multiplier")
    sol = problem.solve([threshold], tau, method="projected_gradient", max_iter=n_steps, tol=0.0,
                        step_size=eta, initial_multipliers=lam0)
    trace = sol.trace[:, 0]
    lams = np.concatenate([trace, np.full(n_steps + 1 - trace.size, trace[-1])])
    b = float(sol.effective_thresholds[0])
    rows = []
    for t, lam in enumerate(lams):
        lam_v = np.array([lam])
        v0, v1, kl = _values(family, lam_v)
        dual = family.dual(lam_v, np.array([b]), order=1)[0]
        rows.append((t, float(lam), v0, v1, b, v1 - b, float(dual), kl))
    df = pd.DataFrame(rows, columns=["step", "lambda", "V_primary", "V_secondary", "threshold", "slack", "dual", "kl"])
    exact = problem.solve([threshold], tau)
    df.attrs.update(requested_threshold=float(sol.thresholds[0]), feasible=bool(sol.feasible), step_size=float(eta),
                    lambda_star=float(exact.multipliers[0]), tau=tau)
    return df


def tau_effect(preferences, threshold, taus, reference=None, behaviour=None) -> pd.DataFrame:
    """The exact MOPO solution at ``threshold`` for each KL strength in ``taus`` (all > 0).

    Columns: tau, lambda, V_primary, V_secondary, threshold (the one enforced), slack, kl,
    objective (``V_primary - tau KL``), feasible. The feasible set does not depend on tau, so
    KL and V_primary can only fall as tau grows.
    """
    problem = as_problem(preferences, reference, behaviour)
    grid = as_finite_array(taus, "taus").reshape(-1)
    if grid.size == 0:
        raise ValueError("taus: need at least one KL strength")
    rows = []
    for tau in grid:
        sol = problem.solve([threshold], check_positive(tau, "taus"))
        b = float(sol.effective_thresholds[0])
        rows.append((float(tau), float(sol.multipliers[0]), float(sol.values[0]), float(sol.values[1]), b,
                     float(sol.values[1] - b), float(sol.kl), float(sol.objective), bool(sol.feasible)))
    return pd.DataFrame(rows, columns=["tau", "lambda", "V_primary", "V_secondary", "threshold", "slack", "kl",
                                       "objective", "feasible"])
