"""Bad and extreme inputs to the tabular solvers (issue 11, item 7), one table.

Each case is an input and what it must give: a ValueError whose message starts with the
argument's name (``error``), the CLI's one-line ``error:`` with exit status 2 and no
traceback (``cli_error``), or a documented behaviour checked against an independent answer
(``behaves``): a threshold needing a multiplier above the cap is reported feasible=False and
converged=False with its constraint indeed violated; a threshold above the attainable maximum
gives the policy of the maximum backed off by INFEASIBLE_BACKOFF (SLSQP in the primal, with
the maximum computed here from the win-rates), however large the threshold.
"""
import json
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from mopo_core import solve_tabular, sweep_thresholds
from mopo_core.cli.main import main
from mopo_core.tabular.algorithm1 import Algorithm1Config, run_algorithm1
from mopo_core.tabular.optim import AdamConfig, minimise
from mopo_core.tabular.solver import INFEASIBLE_BACKOFF, solve_scores
from synthetic import make_structure
from tests.reference_solvers import barrier_residual_reference, primal_slsqp

NAN, INF = float("nan"), float("inf")
TAU = 0.1
TWO = make_structure("bt_conflict", n_responses=6, seed=1)
THREE = make_structure("three_objectives", n_responses=6, seed=1)


def _rates(structure):
    """Win-rates (K, M, N) against the behaviour policy, written out here."""
    return np.einsum("kmij,mj->kmi", structure.preferences, structure.behaviour)


def _top(structure):
    """Each secondary objective's attainable maximum (J,): the best response per prompt."""
    return np.einsum("m,jm->j", structure.prompt_weights, _rates(structure)[1:].max(axis=2))


def _solve(structure=TWO, thresholds=(0.5,), tau=TAU, **kwargs):
    return solve_tabular(structure.preferences, list(thresholds), tau, reference=structure.reference,
                         behaviour=structure.behaviour, prompt_weights=structure.prompt_weights, **kwargs)


def _algorithm1(thresholds=(0.5,), **config):
    return run_algorithm1(TWO.preferences, list(thresholds), TAU, reference=TWO.reference, behaviour=TWO.behaviour,
                          config=Algorithm1Config(**{"steps": 3, **config}))


@dataclass
class Case:
    name: str
    run: Callable  # (run_cli) -> result; run_cli(*argv) -> (status, stdout, stderr)
    error: str | None = None  # regex the ValueError's message (or the CLI's stderr line) must match
    cli: bool = False
    behaves: Callable | None = None  # check on the result


def _capped(sol):
    """tau = 1e9 needs lam ~ 1e10 > MAX_MULTIPLIER: the constraint stays violated, so never feasible."""
    assert sol.values[1] < sol.thresholds[0] - 1e-3, "the case makes the point: the threshold is not met"
    assert not sol.feasible and not sol.converged


def _at_backed_off_maximum(sol, structure=TWO):
    """The policy is the MOPO solution at the attainable maximum minus INFEASIBLE_BACKOFF."""
    top = _top(structure)
    np.testing.assert_allclose(sol.max_attainable, top, rtol=1e-12)
    assert not sol.feasible and sol.converged
    np.testing.assert_allclose(sol.effective_thresholds, top - INFEASIBLE_BACKOFF, atol=1e-12)
    expected = primal_slsqp(_rates(structure), structure.reference, structure.prompt_weights,
                            top - INFEASIBLE_BACKOFF, TAU)
    assert np.max(np.abs(np.atleast_2d(sol.policy) - expected)) < 1e-5


def _joint_backed_off(sol):
    """J = 2 with b_1 = 1e16: the first threshold is clipped to its maximum before the shift."""
    top = _top(THREE)
    assert not sol.feasible and sol.converged and np.all(np.isfinite(sol.policy))
    assert np.all(sol.effective_thresholds <= top)
    assert sol.values[1] >= top[0] - INFEASIBLE_BACKOFF - 1e-8, "first objective pushed to its maximum"
    assert np.all(sol.values[1:] >= sol.effective_thresholds - 1e-8)


def _barrier_fixed_point(result, thresholds=(5.0,), sigma=1e-3, delta=1e-3):
    """MOPO-LB above the attainable maximum: the fixed point on the quadratic extension, finite."""
    lam = result.multipliers
    assert np.all(np.isfinite(result.policy)) and np.all(lam > sigma / delta)
    residual = barrier_residual_reference(lam, _rates(TWO), TWO.reference, TWO.prompt_weights, thresholds, TAU,
                                          sigma, delta)
    assert np.max(np.abs(residual)) <= 1e-9


def _cli_json(first_check):
    def check(outcome):
        status, out, err = outcome
        assert status == 0 and "Traceback" not in err, err
        doc = json.loads(out)
        first_check(doc)
    return check


def _cli_capped(doc):
    assert doc["feasible"] is False and doc["converged"] is False
    assert doc["values"][1] < doc["thresholds"][0]


def _cli_same_as_threshold_5(run_cli):
    huge = run_cli("solve", "--threshold", "1e16", "--json")
    five = run_cli("solve", "--threshold", "5", "--json")
    return huge, five


def _cli_huge_threshold(outcome):
    (status, out, err), (status5, out5, _) = outcome
    assert status == status5 == 0 and "Traceback" not in err, err
    huge, five = json.loads(out), json.loads(out5)
    np.testing.assert_allclose(huge["policy"], five["policy"], atol=1e-12)
    s = make_structure("bt_conflict")  # the CLI's default instance
    top = _top(s)
    np.testing.assert_allclose(huge["values"][1], top[0] - INFEASIBLE_BACKOFF, atol=1e-8)
    assert huge["feasible"] is False


CASES = [
    # --- solve_tabular / solve_scores / sweep: tau, eps, thresholds
    Case("tau nan", lambda _: _solve(tau=NAN), r"^tau: non-finite"),
    Case("tau inf", lambda _: _solve(tau=INF), r"^tau: non-finite"),
    Case("tau negative", lambda _: _solve(tau=-1.0), r"^tau: must be > 0"),
    Case("tau subnormal (scores / tau overflow)", lambda _: _solve(tau=5e-324), r"^tau: .*too small"),
    Case("solve_scores tau nan", lambda _: solve_scores(_rates(TWO)[0], _rates(TWO)[1:], [0.5], NAN, TWO.reference,
                                                        TWO.prompt_weights), r"^tau: non-finite"),
    Case("sweep tau nan", lambda _: sweep_thresholds(TWO.preferences, [0.4, 0.5], NAN), r"^tau: non-finite"),
    Case("eps nan", lambda _: _solve(eps=NAN), r"^eps: non-finite"),
    Case("eps inf", lambda _: _solve(eps=INF), r"^eps: non-finite"),
    Case("thresholds nan", lambda _: _solve(thresholds=(NAN,)), r"^thresholds: non-finite"),
    Case("thresholds inf", lambda _: _solve(thresholds=(INF,)), r"^thresholds: non-finite"),
    # --- optional solver arguments
    Case("initial_multipliers nan", lambda _: _solve(initial_multipliers=[NAN]), r"^initial_multipliers: non-finite"),
    Case("initial_multipliers negative", lambda _: _solve(initial_multipliers=[-1.0]),
         r"^initial_multipliers: must be >= 0"),
    Case("initial_multipliers shape", lambda _: _solve(initial_multipliers=[1.0, 2.0]),
         r"^initial_multipliers: expected 1 value"),
    Case("step_size nan", lambda _: _solve(method="projected_gradient", step_size=NAN), r"^step_size: non-finite"),
    Case("step_size zero", lambda _: _solve(method="projected_gradient", step_size=0.0), r"^step_size: must be > 0"),
    Case("step_size negative", lambda _: _solve(step_size=-1.0), r"^step_size: must be > 0"),
    Case("tol nan", lambda _: _solve(tol=NAN), r"^tol: non-finite"),
    Case("tol negative", lambda _: _solve(tol=-1e-9), r"^tol: must be >= 0"),
    Case("max_iter zero", lambda _: _solve(max_iter=0), r"^max_iter: must be >= 1"),
    Case("max_iter fractional", lambda _: _solve(max_iter=2.5), r"^max_iter: must be an integer"),
    Case("max_iter bool", lambda _: _solve(max_iter=True), r"^max_iter: must be an integer"),
    Case("method unknown (robust path too)", lambda _: _solve(eps=0.05, method="bogus"), r"^method: expected one of"),
    # --- documented behaviour at the extremes
    Case("tau 1e9: multiplier cap", lambda _: _solve(thresholds=(0.6,), tau=1e9), behaves=_capped),
    Case("tau 1e9 projected gradient", lambda _: _solve(thresholds=(0.6,), tau=1e9, method="projected_gradient"),
         behaves=_capped),
    Case("threshold 1e16 = attainable max backed off", lambda _: _solve(thresholds=(1e16,)),
         behaves=_at_backed_off_maximum),
    Case("threshold 5 = attainable max backed off", lambda _: _solve(thresholds=(5.0,)),
         behaves=_at_backed_off_maximum),
    Case("three objectives, one threshold 1e16", lambda _: _solve(THREE, thresholds=(1e16, 0.2)),
         behaves=_joint_backed_off),
    # --- Algorithm 1 and the optimiser
    Case("t0 nan", lambda _: _algorithm1(t0=NAN), r"^t0: must be an integer"),
    Case("t0 fractional", lambda _: _algorithm1(t0=2.5), r"^t0: must be an integer"),
    Case("lambda_lr nan", lambda _: _algorithm1(lambda_lr=NAN), r"^lambda_lr: non-finite"),
    Case("adam beta1 nan", lambda _: _algorithm1(adam=AdamConfig(beta1=NAN)), r"^adam.beta1: non-finite"),
    Case("adam beta2 = 1", lambda _: _algorithm1(adam=AdamConfig(beta2=1.0)), r"^adam.beta2: must be < 1"),
    Case("adam eps zero", lambda _: _algorithm1(adam=AdamConfig(eps=0.0)), r"^adam.eps: must be > 0"),
    Case("minimise adam lr nan", lambda _: minimise(lambda x: (0.0, x), np.zeros(2), 3, AdamConfig(lr=NAN)),
         r"^adam.lr: non-finite"),
    Case("barrier_sigma nan", lambda _: _algorithm1(variant="log_barrier", barrier_sigma=NAN),
         r"^barrier_sigma: non-finite"),
    Case("MOPO-LB threshold 1e300", lambda _: _algorithm1((1e300,), variant="log_barrier"),
         r"^thresholds: MOPO-LB multipliers .* leave the floating-point range"),
    Case("MOPO-LB barrier_delta 1e-300", lambda _: _algorithm1(variant="log_barrier", barrier_delta=1e-300),
         r"^thresholds: MOPO-LB multipliers .* leave the floating-point range"),
    Case("MOPO-LB threshold above the maximum", lambda _: _algorithm1((5.0,), variant="log_barrier"),
         behaves=_barrier_fixed_point),
    # --- the command line
    Case("cli solve --tau nan", lambda cli: cli("solve", "--tau", "nan", "--threshold", "0.5"), r"tau", cli=True),
    Case("cli solve --tau 5e-324", lambda cli: cli("solve", "--tau", "5e-324", "--threshold", "0.5"),
         r"tau: .*too small", cli=True),
    Case("cli solve --eps nan", lambda cli: cli("solve", "--eps", "nan", "--threshold", "0.5"), r"eps", cli=True),
    Case("cli solve --eps -1", lambda cli: cli("solve", "--eps=-1", "--threshold", "0.5"), r"eps: must be >= 0",
         cli=True),
    Case("cli solve --threshold nan", lambda cli: cli("solve", "--threshold", "nan"), r"--threshold: non-finite", cli=True),
    Case("cli solve --threshold inf", lambda cli: cli("solve", "--threshold", "inf"), r"--threshold: non-finite", cli=True),
    Case("cli sweep --tau nan", lambda cli: cli("sweep", "--tau", "nan"), r"tau", cli=True),
    Case("cli solve --tau 1e9", lambda cli: cli("solve", "--tau", "1e9", "--threshold", "0.6", "--json"),
         behaves=_cli_json(_cli_capped)),
    Case("cli solve --threshold 1e16 = --threshold 5", _cli_same_as_threshold_5, behaves=_cli_huge_threshold),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, tmp_path, capsys):
    def run_cli(*argv):
        capsys.readouterr()
        status = main(["--store", str(tmp_path / "runs.sqlite"), *argv])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    if case.behaves is not None:
        case.behaves(case.run(run_cli))
    elif case.cli:
        status, _, err = case.run(run_cli)
        assert status == 2 and "Traceback" not in err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert re.search(case.error, err), err
    else:
        with pytest.raises(ValueError, match=case.error):
            case.run(run_cli)
