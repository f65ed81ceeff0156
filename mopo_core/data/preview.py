"""Threshold preview from a preference file: the exact tabular MOPO over the file's own responses,
before any training (issue 14 item 6).

What is solved. The file's pairs are turned into a :class:`~mopo_core.tabular.solver.TabularProblem`
with M prompts (MOPO.md sections 1-3), and MOPO is solved exactly on it for each threshold:

- **Responses.** Prompt m's responses are the file's distinct responses to it (exact text, first
  seen order); prompts with fewer responses than the largest set are padded with entries that
  the reference and behaviour give probability 0 (they take no part in anything).
- **Pairwise preferences, smoothed.** For responses i != j of a prompt and objective k, every pair
  in the file that compares them adds its label (``P_k(i preferred)``: 1, 0, 0.5 for a tie or a
  soft label) to ``wins_k[i, j]``, ``1 - label`` to ``wins_k[j, i]``, and 1 to ``n[i, j]`` and
  ``n[j, i]`` (a repeated pair counts again). The preference is the posterior mean under a
  symmetric Beta(prior/2, prior/2) prior centred on a tie::

      P_k(i ≻ j | x) = (wins_k[i, j] + prior / 2) / (n[i, j] + prior)

  so ``P + Pᵀ = 1``; pairs the file never compares get 0.5 (no information), and so does the
  diagonal. ``prior = 0`` keeps raw label averages (0/1 for a single hard label), which is what
  makes offline MOPO collapse onto the label winner; the default ``prior = 1`` turns one hard
  label into 0.75 / 0.25.
- **Behaviour μ** is the data's empirical distribution: ``μ(y | x)`` = the number of times y
  appears in x's pairs / (2 × x's number of pairs). **Win-rates** are MOPO.md's
  ``w_k(x, y) = Σ_{y'} μ(y' | x) P_k(y ≻ y' | x)`` (the self-comparison counts as a tie, so
  ``V_k(μ) = 1/2`` exactly): the empirical win-rate of each response against the prompt's
  responses as the data sampled them, smoothed.
- **Reference π_ref** is uniform over each prompt's distinct responses (the file carries no
  model probabilities); for a prompt with one pair π_ref = μ.
- **Prompts** are equally weighted, and ONE λ is shared across all prompts (the dual of the
  M-prompt problem), as the parametric trainer has one λ for the whole data.

For each threshold the table gives whether it is attainable at all (``feasible``: the solver's
rule, a threshold equal to the attainable maximum is never reached with τ > 0), the predicted
multiplier λ, the predicted values ``V_0`` (primary), ``V_1..`` (win-rates against μ) and the
KL to π_ref (nats, prompts averaged). The attainable maxima (``Σ_m ν_m max_y w_j``) and π_ref's
values tell which thresholds this data can support. The prediction is exact for this tabular
problem; a language model trained on the file moves probability over texts it generates, not
only over these responses, and is judged on another scale (a preference model's win-rate
against the reference's samples), so the preview says what the labels support, not what a run
will measure.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mopo_core.data.preferences import PreferenceDataset, load_preferences
from mopo_core.data.public_formats import FORMATS, load_public
from mopo_core.tabular.solver import TabularProblem, kl_divergence, policy_values
from mopo_core.validation import as_finite_array, check_array_bytes, check_int, check_nonnegative, check_positive

#: Default KL strength (the paper's text-generation setting).
DEFAULT_TAU = 0.08
#: Default pseudo-count of the tie-centred prior on each pairwise preference.
DEFAULT_PRIOR = 1.0
#: Thresholds in the default grid (from π_ref's value to the attainable maximum).
DEFAULT_N_THRESHOLDS = 11
#: ``fmt`` values: this project's schema, a public format, or ``"auto"`` (told from the file).
NATIVE_FORMAT = "mopo"
PREVIEW_FORMATS = ("auto", NATIVE_FORMAT, *FORMATS)


@dataclass
class PreviewProblem:
    """The tabular problem built from a dataset, and how it was built.

    ``problem`` is the M-prompt :class:`TabularProblem` (preferences (K, M, N, N), reference and
    behaviour (M, N), equal prompt weights); ``responses[m]`` are prompt m's distinct responses in
    the column order; ``counts`` (M, N, N) how many times each pair was compared.
    """

    problem: TabularProblem
    objectives: tuple[str, ...]
    prompts: list[str]
    responses: list[list[str]]
    counts: np.ndarray = field(repr=False)
    prior: float = DEFAULT_PRIOR


@dataclass
class PreviewResult:
    """A threshold preview (see the module docstring).

    ``table``: one row per threshold, columns ``b1..bJ`` (requested thresholds), ``feasible``,
    ``lambda1..lambdaJ``, ``V0..V{K-1}`` (predicted values, win-rates against the data's
    responses) and ``KL`` (nats). For an infeasible row the values are those of the nearest
    attainable thresholds (the solver's policy), not of the request.
    ``reference_values`` (K,): π_ref's values; ``attainable_max`` (J,): each secondary's largest
    value; ``unconstrained_values`` (K,) and ``unconstrained_kl``: the policy at λ = 0.
    """

    source: str
    objectives: tuple[str, ...]
    tau: float
    prior: float
    n_pairs: int
    n_prompts: int
    n_responses: int
    max_responses_per_prompt: int
    reference_values: np.ndarray
    attainable_max: np.ndarray
    unconstrained_values: np.ndarray
    unconstrained_kl: float
    table: pd.DataFrame
    built: PreviewProblem | None = field(default=None, repr=False)

    @property
    def secondaries(self) -> tuple[str, ...]:
        return self.objectives[1:]

    def to_dict(self) -> dict:
        """JSON-ready (lists, floats, bools)."""
        return {
            "source": self.source,
            "objectives": list(self.objectives),
            "tau": self.tau,
            "prior": self.prior,
            "n_pairs": self.n_pairs,
            "n_prompts": self.n_prompts,
            "n_responses": self.n_responses,
            "max_responses_per_prompt": self.max_responses_per_prompt,
            "reference_values": [float(v) for v in self.reference_values],
            "attainable_max": [float(v) for v in self.attainable_max],
            "unconstrained_values": [float(v) for v in self.unconstrained_values],
            "unconstrained_kl": float(self.unconstrained_kl),
            "rows": json.loads(self.table.to_json(orient="records", double_precision=15)),
        }


# --------------------------------------------------------------------------- loading


def load_any(path, fmt: str = "auto", objective: str | None = None) -> PreferenceDataset:
    """A preference file as a dataset: this project's schema (``"mopo"``: a ``.parquet`` file or
    JSON lines whose first record has ``response_a``, ``response_b`` and ``labels``, when
    ``fmt="auto"``) or a public format (:func:`mopo_core.data.public_formats.load_public`).
    Bad rows raise one ``ValueError`` naming the file and rows."""
    if fmt not in PREVIEW_FORMATS:
        raise ValueError(f"format: unknown format {fmt!r} (expected one of {', '.join(PREVIEW_FORMATS)})")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such file", str(path))
    if fmt == "auto" and _native_schema(path):
        fmt = NATIVE_FORMAT
    if fmt == NATIVE_FORMAT:
        if objective is not None:
            raise ValueError("objective: only for public one-objective formats (mopo files name their objectives)")
        return load_preferences(path)
    return load_public(path, format=fmt, objective=objective).dataset


def _native_schema(path: Path) -> bool:
    if path.suffix.lower() == ".parquet":
        return True
    if path.suffix.lower() != ".jsonl":
        return False
    with open(path, "rb") as handle:
        first = next((line for line in handle if line.strip()), b"")
    try:
        record = json.loads(first)
    except (ValueError, RecursionError):  # the loaders name the problem with its row
        return False
    return isinstance(record, dict) and {"response_a", "response_b", "labels"} <= set(record)


def _dataset(data, fmt: str, objective: str | None) -> tuple[PreferenceDataset, str]:
    """(dataset, source name) from a path, a dataset or an iterable of records."""
    if isinstance(data, PreferenceDataset):
        return data, "dataset"
    if isinstance(data, (str, os.PathLike)):
        return load_any(data, fmt, objective), str(data)
    if isinstance(data, Mapping) or not isinstance(data, Iterable):
        raise ValueError(f"data: expected a file path, a PreferenceDataset or records, got {type(data).__name__}")
    return PreferenceDataset.from_records(data), "records"


# --------------------------------------------------------------------------- the tabular problem


def build_problem(dataset: PreferenceDataset, prior: float = DEFAULT_PRIOR, source: str = "dataset") -> PreviewProblem:
    """The M-prompt tabular problem of ``dataset`` (rules in the module docstring).

    ``ValueError`` naming ``source`` when the dataset has fewer than two objectives or no pairs,
    or ``prior`` is negative or not finite.
    """
    prior = check_nonnegative(prior, "prior")
    if len(dataset) == 0:
        raise ValueError(f"{source}: no pairs")
    if dataset.n_objectives < 2:
        raise ValueError(f"{source}: one objective ({dataset.objectives[0]}); a threshold preview needs a primary "
                         "and at least one secondary objective (K >= 2)")
    k = dataset.n_objectives
    prompts = dataset.prompts()
    row_of = {prompt: m for m, prompt in enumerate(prompts)}
    responses: list[dict[str, int]] = [{} for _ in prompts]
    for pair in dataset:
        index = responses[row_of[pair.prompt]]
        for text in (pair.response_a, pair.response_b):
            index.setdefault(text, len(index))
    m_count, n = len(prompts), max(len(r) for r in responses)
    check_array_bytes((k, m_count, n, n), 8, f"{source}: preferences (objectives, prompts, responses, responses)")
    wins = np.zeros((k, m_count, n, n))
    counts = np.zeros((m_count, n, n))
    appearances = np.zeros((m_count, n))
    for pair in dataset:
        m = row_of[pair.prompt]
        a, b = responses[m][pair.response_a], responses[m][pair.response_b]
        labels = np.asarray(pair.labels, dtype=float)
        wins[:, m, a, b] += labels
        wins[:, m, b, a] += 1.0 - labels
        counts[m, a, b] += 1.0
        counts[m, b, a] += 1.0
        appearances[m, a] += 1.0
        appearances[m, b] += 1.0
    denominator = counts + prior
    with np.errstate(invalid="ignore", divide="ignore"):
        preferences = np.where(denominator > 0, (wins + prior / 2.0) / denominator, 0.5)
    diagonal = np.arange(n)
    preferences[:, :, diagonal, diagonal] = 0.5
    sizes = np.array([len(r) for r in responses])
    present = diagonal[None, :] < sizes[:, None]
    reference = np.where(present, 1.0 / sizes[:, None], 0.0)
    behaviour = appearances / appearances.sum(axis=1, keepdims=True)
    problem = TabularProblem.build(preferences, reference, behaviour, np.full(m_count, 1.0 / m_count))
    return PreviewProblem(problem, dataset.objectives, prompts, [list(r) for r in responses], counts, prior)


def default_thresholds(problem: TabularProblem, tau: float, n: int = DEFAULT_N_THRESHOLDS) -> np.ndarray:
    """(n, J): π_ref's values, then n - 1 rows evenly from where the constraints start to bind
    (the larger of π_ref's value and the unconstrained, λ = 0, policy's value, per secondary) to the
    attainable maxima. The last row is the maximum itself, which τ > 0 never reaches: the
    attainable edge. Thresholds below the binding point all give the λ = 0 policy."""
    n = check_int(n, "n_thresholds", 2)
    family = problem.family(tau)
    reference = policy_values(problem.reference, problem.rates, problem.prompt_weights)[1:]
    free = policy_values(family.policy(np.zeros(reference.size)), problem.rates, problem.prompt_weights)[1:]
    start, stop = np.maximum(reference, free), family.max_attainable
    ramp = start[None, :] + np.linspace(0.0, 1.0, n - 1)[:, None] * (stop - start)[None, :]
    return np.vstack([reference[None, :], ramp])


def _threshold_grid(thresholds, n_secondary: int) -> np.ndarray:
    grid = as_finite_array(thresholds, "thresholds")
    if grid.ndim == 0:
        grid = grid.reshape(1)
    if grid.ndim == 1:
        if n_secondary == 1:
            grid = grid[:, None]
        elif grid.shape[0] % n_secondary == 0:  # rows of J values, one after another
            grid = grid.reshape(-1, n_secondary)
        else:
            raise ValueError(f"thresholds: with {n_secondary} secondary objectives give rows of {n_secondary} "
                             f"values (shape (T, {n_secondary})), got {grid.shape[0]} values")
    if grid.ndim != 2 or grid.shape[1] != n_secondary or grid.shape[0] == 0:
        raise ValueError(f"thresholds: expected shape (T,) or (T, {n_secondary}) with T >= 1, got {grid.shape}")
    return grid


def threshold_preview(
    path_or_records,
    thresholds=None,
    tau: float = DEFAULT_TAU,
    prior: float = DEFAULT_PRIOR,
    fmt: str = "auto",
    objective: str | None = None,
    n_thresholds: int = DEFAULT_N_THRESHOLDS,
) -> PreviewResult:
    """Exact tabular MOPO over a preference file's responses, per threshold (module docstring).

    ``path_or_records``: a file path (``fmt``: ``"auto"``, ``"mopo"`` or a public format;
    ``objective`` for one-objective formats), a :class:`PreferenceDataset`, or records in this
    project's schema. ``thresholds``: (T,) when there is one secondary objective, or (T, J) (a flat
    sequence of T * J values is read as rows of J);
    None gives :func:`default_thresholds` (``n_thresholds`` rows). ``tau`` > 0 the KL strength,
    ``prior`` >= 0 the tie-centred pseudo-count. Bad input raises ``ValueError`` naming the
    file, row or argument.
    """
    tau = check_positive(tau, "tau")
    prior = check_nonnegative(prior, "prior")
    dataset, source = _dataset(path_or_records, fmt, objective)
    built = build_problem(dataset, prior, source)
    problem = built.problem
    n_secondary = problem.rates.shape[0] - 1
    if thresholds is None:
        grid = default_thresholds(problem, tau, n_thresholds)
    else:
        grid = _threshold_grid(thresholds, n_secondary)
    sweep = problem.sweep(grid, tau, keep_policies=False)
    family = problem.family(tau)
    free_policy = family.policy(np.zeros(n_secondary))
    free_values = policy_values(free_policy, problem.rates, problem.prompt_weights)
    free_kl = kl_divergence(free_policy, problem.reference, problem.prompt_weights)
    columns: dict[str, object] = {f"b{j + 1}": grid[:, j] for j in range(n_secondary)}
    columns["feasible"] = sweep.feasible
    columns.update({f"lambda{j + 1}": sweep.multipliers[:, j] for j in range(n_secondary)})
    columns.update({f"V{k}": sweep.values[:, k] for k in range(sweep.values.shape[1])})
    columns["KL"] = sweep.kl
    sizes = [len(r) for r in built.responses]
    return PreviewResult(
        source=source,
        objectives=built.objectives,
        tau=tau,
        prior=prior,
        n_pairs=len(dataset),
        n_prompts=len(built.prompts),
        n_responses=int(sum(sizes)),
        max_responses_per_prompt=int(max(sizes)),
        reference_values=policy_values(problem.reference, problem.rates, problem.prompt_weights),
        attainable_max=family.max_attainable.copy(),
        unconstrained_values=free_values,
        unconstrained_kl=free_kl,
        table=pd.DataFrame(columns),
        built=built,
    )


def format_preview(result: PreviewResult, digits: int = 4) -> str:
    """A :class:`PreviewResult` as plain text (the command line's output)."""
    names = result.objectives
    lines = [
        f"file: {result.source}",
        f"pairs: {result.n_pairs}  prompts: {result.n_prompts}  responses: {result.n_responses} "
        f"(at most {result.max_responses_per_prompt} per prompt)",
        f"objectives: V0 = {names[0]} (primary, maximised)"
        + "".join(f", V{j} = {name} (constrained: V{j} >= b{j})" for j, name in enumerate(names[1:], start=1)),
        f"tau = {result.tau:g} (KL strength), prior = {result.prior:g} (pseudo-comparisons per pair, centred on a tie)",
        "values are win-rates against the file's responses (the data's empirical distribution; 0.5 = as good "
        "as the data), one lambda shared across prompts, prompts equally weighted, pi_ref uniform over each "
        "prompt's responses",
        "reference pi_ref : " + ", ".join(f"V{k} = {v:.{digits}f}" for k, v in enumerate(result.reference_values)),
        "lambda = 0       : " + ", ".join(f"V{k} = {v:.{digits}f}" for k, v in enumerate(result.unconstrained_values))
        + f", KL = {result.unconstrained_kl:.{digits}f}",
        "attainable max   : " + ", ".join(f"V{j} = {v:.{digits}f}" for j, v in enumerate(result.attainable_max, 1))
        + " (a threshold at or above it cannot be met with tau > 0)",
        "",
        result.table.to_string(index=False, float_format=lambda v: f"{v:.{digits}f}"),
    ]
    n_feasible = int(result.table["feasible"].sum())
    lines.append(f"\n{n_feasible} of {len(result.table)} thresholds attainable; infeasible rows show the policy for "
                 "the nearest attainable thresholds")
    return "\n".join(lines)
