"""Canonical tabular preference structures with a known answer (SYNTHETIC.md).

A structure is a pure function ``(name, sizes, seed, params) -> Structure``: the same
arguments give bit-identical arrays on every machine (only ``np.random.default_rng`` is
used, with separate child streams for the preferences, the reference and the behaviour,
so changing how ``pi_ref`` is drawn never changes the preferences).

Shapes: ``K`` objectives (objective 0 is the primary), ``M`` prompts, ``N`` responses.

- ``preferences[k, m, i, j] = P_k(y_i beats y_j | prompt m)``, ``(K, M, N, N)``, with
  ``P + P^T = 1`` and diagonal 0.5.
- ``reference`` and ``behaviour``: ``(M, N)``, one distribution per prompt.
- ``prompt_weights``: ``(M,)``, equal.

Latent Bradley-Terry rewards are standard normal per prompt and response; a secondary
reward with correlation ``rho`` to the primary is ``rho * z_0 + sqrt(1 - rho^2) * z_k``.
They are multiplied by ``scale`` (default 1.0: for N = 8 the median ``|P - 0.5|`` is
about 0.22 and under 1% of pairs lie within 0.02 of 0 or 1; at 3.0 about a third of the
pairs would be that close to deterministic).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.special import expit

from mopo_core.validation import (
    check_array_bytes,
    check_distribution,
    check_int,
    check_nonnegative,
    check_positive,
    check_preferences,
    check_prompt_weights,
)

STRUCTURES: tuple[str, ...] = (
    "bt_aligned",
    "bt_conflict",
    "bt_independent",
    "cyclic",
    "deterministic",
    "mixture",
    "three_objectives",
    "multi_prompt",
)

#: Structures with two objectives, usable as ``multi_prompt`` components.
TWO_OBJECTIVE_STRUCTURES: tuple[str, ...] = (
    "bt_aligned",
    "bt_conflict",
    "bt_independent",
    "cyclic",
    "deterministic",
    "mixture",
)

#: Smallest probability a Dirichlet-drawn distribution may give a response (for N <= 500;
#: larger N use ``0.5 / N`` so the floor stays attainable).
DIRICHLET_FLOOR = 1e-3

_TWO_NAMES = ("helpfulness", "harmlessness")
_THREE_NAMES = ("helpfulness", "honesty", "harmlessness")


@dataclass(frozen=True, eq=False)
class Structure:
    """One synthetic instance; arrays are validated on construction and read-only.

    ``params`` holds the effective parameters (defaults included). ``latent_rewards`` is
    ``(K, M, N)`` with ``P_k[m, i, j] = sigmoid(r_k[m, i] - r_k[m, j])`` when every
    objective is Bradley-Terry, else ``None``.
    """

    name: str
    params: dict
    seed: int
    preferences: np.ndarray
    reference: np.ndarray
    behaviour: np.ndarray
    prompt_weights: np.ndarray
    objective_names: tuple[str, ...]
    latent_rewards: np.ndarray | None = None

    def __post_init__(self):
        prefs = check_preferences(self.preferences)
        k, m, n, _ = prefs.shape
        fields = {
            "preferences": prefs,
            "reference": check_distribution(self.reference, m, n, "reference"),
            "behaviour": check_distribution(self.behaviour, m, n, "behaviour"),
            "prompt_weights": check_prompt_weights(self.prompt_weights, m),
        }
        if len(self.objective_names) != k:
            raise ValueError(
                f"objective_names: expected {k} names, one per objective, "
                f"got {self.objective_names!r}"
            )
        if self.latent_rewards is not None:
            rewards = np.asarray(self.latent_rewards, dtype=np.float64)
            if rewards.shape != (k, m, n):
                raise ValueError(f"latent_rewards: expected shape {(k, m, n)}, got {rewards.shape}")
            fields["latent_rewards"] = rewards
        for field, value in fields.items():
            value = np.asarray(value, dtype=np.float64).view()  # a read-only view, no copy of big tensors
            value.setflags(write=False)
            object.__setattr__(self, field, value)
        object.__setattr__(self, "objective_names", tuple(self.objective_names))

    @property
    def n_objectives(self) -> int:
        """``K``."""
        return self.preferences.shape[0]

    @property
    def n_prompts(self) -> int:
        """``M``."""
        return self.preferences.shape[1]

    @property
    def n_responses(self) -> int:
        """``N``."""
        return self.preferences.shape[2]


# --------------------------------------------------------------------------- checks


def _check_interval(value, name: str, low: float, high: float) -> float:
    """A real number in ``[low, high]``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a number, got {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{name}: must be in [{low}, {high}], got {value!r}")
    return number


def _check_choice(options: tuple[str, ...]) -> Callable[[object, str], str]:
    def check(value, name: str) -> str:
        if value not in options:
            raise ValueError(f"{name}: must be one of {options}, got {value!r}")
        return value

    return check


def _check_correlations(value, name: str) -> tuple[float, float]:
    if np.ndim(value) != 1 or len(value) != 2:
        raise ValueError(f"{name}: expected two correlations (aligned, conflicting), got {value!r}")
    return tuple(_check_interval(v, f"{name}[{i}]", -1.0, 1.0) for i, v in enumerate(value))


def _check_components(value, name: str) -> tuple[str, ...]:
    components = (value,) if isinstance(value, str) else tuple(value)
    if not components:
        raise ValueError(f"{name}: need at least one component from {TWO_OBJECTIVE_STRUCTURES}")
    for component in components:
        if component not in TWO_OBJECTIVE_STRUCTURES:
            raise ValueError(
                f"{name}: unknown component {component!r}; valid: {TWO_OBJECTIVE_STRUCTURES}"
            )
    return components


def _check_correlation(value, name: str) -> float:
    return _check_interval(value, name, -1.0, 1.0)


def _check_share(value, name: str) -> float:
    return _check_interval(value, name, 0.0, 1.0)


#: How each parameter is validated (and normalised), whichever structure accepts it.
#: Allowed values of the string-valued common parameters (for pickers in the app).
PARAMETER_CHOICES: dict[str, tuple[str, ...]] = {
    "reference": ("uniform", "dirichlet"),
    "behaviour": ("reference", "uniform", "dirichlet"),
}


_PARAM_CHECKS: dict[str, Callable[[object, str], object]] = {
    "scale": check_positive,
    "correlation": _check_correlation,
    "cyclic_strength": check_nonnegative,
    "mix": _check_share,
    "group_scale": check_positive,
    "correlations": _check_correlations,
    "components": _check_components,
    "reference": _check_choice(PARAMETER_CHOICES["reference"]),
    "behaviour": _check_choice(PARAMETER_CHOICES["behaviour"]),
    "dirichlet_alpha": check_positive,
}

_COMMON_DEFAULTS = {"reference": "uniform", "behaviour": "reference", "dirichlet_alpha": 1.0}


# --------------------------------------------------------------------------- building blocks


def _correlated_normals(rng, shape: tuple[int, int], correlations) -> np.ndarray:
    """``(1 + len(correlations), M, N)`` standard normals; row k > 0 has correlation
    ``correlations[k - 1]`` with row 0."""
    z = rng.standard_normal((1 + len(correlations), *shape))
    secondaries = [
        rho * z[0] + np.sqrt(1.0 - rho**2) * z[k + 1] for k, rho in enumerate(correlations)
    ]
    return np.stack([z[0], *secondaries])


def _differences(values: np.ndarray) -> np.ndarray:
    """``(..., N) -> (..., N, N)`` with entry ``[i, j] = values[i] - values[j]``."""
    return values[..., :, None] - values[..., None, :]


def _cyclic_term(n: int) -> np.ndarray:
    """``(N, N)`` skew-symmetric rock-paper-scissors logits ``sin(2 pi (i - j) / N)``."""
    index = np.arange(n)
    return np.sin(2.0 * np.pi * _differences(index) / n)


def _complete(upper: np.ndarray) -> np.ndarray:
    """Make ``(..., N, N)`` a valid preference array in place: keep the strict upper
    triangle, set the lower one to ``1 - P^T`` and the diagonal to 0.5, so that
    ``P + P^T = 1`` holds to rounding whatever the lower triangle held before."""
    n = upper.shape[-1]
    rows, cols = np.tril_indices(n, k=-1)
    upper[..., rows, cols] = 1.0 - upper[..., cols, rows]
    upper[..., np.arange(n), np.arange(n)] = 0.5
    return upper


def _bradley_terry(rewards: np.ndarray) -> np.ndarray:
    """``(..., M, N)`` rewards -> ``(..., M, N, N)`` preferences ``sigmoid(r_i - r_j)``, filled one
    prompt at a time so that temporaries stay one prompt's size (N = 1000, M = 256 fits)."""
    out = np.empty(rewards.shape + rewards.shape[-1:])
    for m in range(rewards.shape[-2]):
        out[..., m, :, :] = _sigmoid_preferences(_differences(rewards[..., m, :]))
    return out


def _sigmoid_preferences(logits: np.ndarray) -> np.ndarray:
    """``(..., N, N)`` skew-symmetric logits -> preferences (overwrites ``logits``)."""
    return _complete(expit(logits, out=logits))


def _dirichlet(rng, n_prompts: int, n_responses: int, alpha: float) -> np.ndarray:
    """``(M, N)`` Dirichlet rows mixed with uniform so every entry is at least
    ``min(DIRICHLET_FLOOR, 0.5 / N)``."""
    floor = min(DIRICHLET_FLOOR, 0.5 / n_responses)
    draws = rng.dirichlet(np.full(n_responses, alpha), size=n_prompts)
    return (1.0 - n_responses * floor) * draws + floor


# --------------------------------------------------------------------------- generators
# Each takes (rng, M, N, params) and returns (preferences (K, M, N, N), latent rewards
# (K, M, N) or None).


def _gen_bt(rng, m, n, p):
    rewards = p["scale"] * _correlated_normals(rng, (m, n), [p["correlation"]])
    return _bradley_terry(rewards), rewards


def _gen_three(rng, m, n, p):
    rewards = p["scale"] * _correlated_normals(rng, (m, n), p["correlations"])
    return _bradley_terry(rewards), rewards


def _gen_cyclic(rng, m, n, p):
    rewards = p["scale"] * _correlated_normals(rng, (m, n), [p["correlation"]])
    primary_logits = _differences(rewards[0]) + p["cyclic_strength"] * _cyclic_term(n)
    return np.stack([_sigmoid_preferences(primary_logits), _bradley_terry(rewards[1])]), None


def _gen_deterministic(rng, m, n, p):
    scores = _correlated_normals(rng, (m, n), [p["correlation"]])
    return _complete((_differences(scores) > 0).astype(np.float64)), None


def _gen_mixture(rng, m, n, p):
    normals = _correlated_normals(rng, (m, n), [p["correlation"]])
    group_a = expit(p["group_scale"] * _differences(normals[0]))
    primary = p["mix"] * group_a + (1.0 - p["mix"]) * (1.0 - group_a)
    return np.stack([_complete(primary), _bradley_terry(p["scale"] * normals[1])]), None


def _gen_multi_prompt(rng, m, n, p):
    components = p["components"]
    seeds = rng.integers(0, 2**63 - 1, size=m)
    parts = [
        make_structure(components[i % len(components)], n, 1, int(seeds[i])) for i in range(m)
    ]
    prefs = np.concatenate([part.preferences for part in parts], axis=1)
    rewards = [part.latent_rewards for part in parts]
    latent = None if any(r is None for r in rewards) else np.concatenate(rewards, axis=1)
    return prefs, latent


@dataclass(frozen=True)
class _Spec:
    generate: Callable
    defaults: dict
    objective_names: tuple[str, ...]


def _bt_spec(correlation: float) -> _Spec:
    return _Spec(_gen_bt, {"scale": 1.0, "correlation": correlation}, _TWO_NAMES)


_SPECS: dict[str, _Spec] = {
    "bt_aligned": _bt_spec(0.8),
    "bt_conflict": _bt_spec(-0.8),
    "bt_independent": _bt_spec(0.0),
    "cyclic": _Spec(
        _gen_cyclic, {"scale": 1.0, "cyclic_strength": 3.0, "correlation": -0.8}, _TWO_NAMES
    ),
    "deterministic": _Spec(_gen_deterministic, {"correlation": -0.8}, _TWO_NAMES),
    "mixture": _Spec(
        _gen_mixture,
        {"mix": 0.7, "group_scale": 4.0, "scale": 1.0, "correlation": -0.8},
        _TWO_NAMES,
    ),
    "three_objectives": _Spec(
        _gen_three, {"scale": 1.0, "correlations": (0.8, -0.8)}, _THREE_NAMES
    ),
    "multi_prompt": _Spec(
        _gen_multi_prompt,
        {"components": ("bt_conflict", "cyclic", "deterministic", "mixture")},
        _TWO_NAMES,
    ),
}


def structure_parameters(name: str) -> dict:
    """The parameters ``make_structure(name, ...)`` accepts, with their default values."""
    if name not in _SPECS:
        raise ValueError(f"name: unknown structure {name!r}; valid names: {STRUCTURES}")
    return {**_SPECS[name].defaults, **_COMMON_DEFAULTS}


def _effective_params(name: str, spec: _Spec, params: dict) -> dict:
    """Defaults overridden by ``params``, each value checked; unknown names rejected."""
    accepted = {**spec.defaults, **_COMMON_DEFAULTS}
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"{name}: unknown parameter(s) {unknown}; accepted parameters: {sorted(accepted)}"
        )
    merged = {**accepted, **params}
    return {key: _PARAM_CHECKS[key](value, key) for key, value in merged.items()}


def _distribution(kind: str, rng, m: int, n: int, alpha: float) -> np.ndarray:
    """``(M, N)``: uniform rows, or Dirichlet rows when ``kind == "dirichlet"``."""
    if kind == "dirichlet":
        return _dirichlet(rng, m, n, alpha)
    return np.full((m, n), 1.0 / n)


def make_structure(
    name: str, n_responses: int = 8, n_prompts: int = 1, seed: int = 0, **params
) -> Structure:
    """Generate the structure ``name`` with ``N = n_responses``, ``M = n_prompts``.

    Parameters per structure (defaults in parentheses):

    - ``bt_aligned`` / ``bt_conflict`` / ``bt_independent``: Bradley-Terry on both
      objectives; ``correlation`` of the latent rewards (+0.8 / -0.8 / 0.0), ``scale`` (1.0).
    - ``cyclic``: primary ``sigmoid(r_i - r_j + cyclic_strength * sin(2 pi (i - j) / N))``
      (``cyclic_strength`` 3.0, ``scale`` 1.0); secondary BT with ``correlation`` (-0.8) to
      the primary's reward. Share of seeds whose primary has a 3-cycle (measured over
      3000 seeds): N = 3: 90%, 4: 94%, 5: 98%, 6: 99.7%, 8: 99.97%, 12: 100%; N = 2
      cannot be intransitive.
    - ``deterministic``: 0/1 preferences from two strict orders, the rankings of normals
      with ``correlation`` (-0.8).
    - ``mixture``: primary ``mix * sigmoid(g (r_i - r_j)) + (1 - mix) * sigmoid(-g (r_i - r_j))``,
      two annotator groups with opposed rewards (``mix`` 0.7 share of group A,
      ``group_scale`` g 4.0, so the primary is a flattened order in about [0.3, 0.7] that
      no BT model fits); secondary BT at ``scale`` (1.0), ``correlation`` (-0.8) to ``r``.
    - ``three_objectives``: K = 3, BT; ``correlations`` of the secondaries' rewards with
      the primary's ((0.8, -0.8): one aligned, one conflicting), ``scale`` (1.0).
    - ``multi_prompt``: meant for M > 1 (M = 1 is allowed). Prompt m is the structure
      ``components[m % len(components)]`` (default ("bt_conflict", "cyclic",
      "deterministic", "mixture"), two-objective structures only) with its default
      parameters, seeded independently from ``seed``.

    Every structure also takes ``reference`` ("uniform" | "dirichlet", default "uniform"),
    ``behaviour`` ("reference" | "uniform" | "dirichlet", default "reference": mu = pi_ref)
    and ``dirichlet_alpha`` (1.0). Dirichlet rows are mixed with uniform so that every
    entry is at least ``min(1e-3, 0.5 / N)`` (full support).

    Raises ``ValueError`` for an unknown name or parameter, ``n_responses < 2``,
    ``n_prompts < 1``, preferences over :data:`mopo_core.validation.MAX_ARRAY_BYTES` (checked
    before anything is allocated), a negative seed or an out-of-range parameter value.
    """
    if not isinstance(name, str) or name not in _SPECS:
        raise ValueError(f"name: unknown structure {name!r}; valid names: {STRUCTURES}")
    spec = _SPECS[name]
    n = check_int(n_responses, "n_responses", 2)
    m = check_int(n_prompts, "n_prompts", 1)
    seed = check_int(seed, "seed", 0)
    check_array_bytes((len(spec.objective_names), m, n, n), 8, f"n_responses = {n}, n_prompts = {m}")
    effective = _effective_params(name, spec, params)
    pref_rng, ref_rng, beh_rng = np.random.default_rng(seed).spawn(3)
    preferences, latent = spec.generate(pref_rng, m, n, effective)
    alpha = effective["dirichlet_alpha"]
    reference = _distribution(effective["reference"], ref_rng, m, n, alpha)
    behaviour = (
        reference
        if effective["behaviour"] == "reference"
        else _distribution(effective["behaviour"], beh_rng, m, n, alpha)
    )
    return Structure(
        name=name,
        params=effective,
        seed=seed,
        preferences=preferences,
        reference=reference,
        behaviour=behaviour,
        prompt_weights=np.full(m, 1.0 / m),
        objective_names=spec.objective_names,
        latent_rewards=latent,
    )
