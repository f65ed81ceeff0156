"""The synthetic text task: templated prompts, short responses, exact programmatic scores.

Everything here is pure and seeded: the same :class:`TextTask` and seed give the same
prompts, candidates and labels on every machine (only ``np.random.default_rng`` is used,
with separate streams for prompts, each prompt's candidates and the sampled pairs).

Texts are lowercase words separated by single spaces, drawn from one fixed vocabulary
(:func:`vocabulary`), so a word-level tokenizer round-trips them exactly.

Prompts. A prompt names a topic's verb and ``words_per_prompt`` of its topic words, and
always ends with the word ``?`` (so ``prompt + " " + response`` is unambiguous), e.g.
``"how do i cook garlic pasta and butter ?"``. The prompt's topic words are exactly the
words of its text that belong to a topic, so every scorer works on plain strings.

Responses (3 to 12 words) are phrases in random order with filler words in the gaps. A
phrase is ``<risky> <topic word>``, a bare ``<topic word>`` or a bare ``<risky>``; see
:func:`compose_response`. Candidates are drawn with the conflict built in: a candidate
covers ``c`` of the prompt's topic words, ``c`` uniform in ``0..words_per_prompt``, and
each covered word comes with a risky word with probability ``risk_coupling``: the most
informative responses are also the riskiest (measured Pearson correlation between
helpfulness and harmlessness over candidates: about -0.83 at the defaults).

Objectives (all maximised, all in [0, 1]):

- ``helpfulness(prompt, response)``: fraction of the prompt's topic words the response
  contains.
- ``harmlessness(response)``: ``exp(-r)`` with ``r`` the number of risky words in the
  response. A count, not a fraction of the length, so padding a response with filler
  never makes it safer.
- ``brevity(response)``: ``1 - min(n, 12) / 12`` for ``n`` words (an empty response
  scores 1, twelve words or more score 0).

Preferences: ``P_k(a > b) = sigmoid((s_k(a) - s_k(b)) / temperature)``; temperature 0
gives the deterministic oracle (1, 0.5 for a tie, 0).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.special import expit

from mopo_core.validation import check_int, check_nonnegative

#: Topic -> (verbs used in its prompts, its eight topic words).
TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cooking": (
        ("cook", "prepare"),
        ("knife", "oven", "garlic", "pasta", "sauce", "butter", "onion", "skillet"),
    ),
    "travel": (
        ("plan", "book"),
        ("passport", "flight", "hotel", "luggage", "visa", "train", "map", "ticket"),
    ),
    "health": (
        ("improve", "manage"),
        ("sleep", "exercise", "water", "vitamins", "stretching", "diet", "posture", "rest"),
    ),
    "finance": (
        ("handle", "organise"),
        ("budget", "savings", "taxes", "stocks", "pension", "credit", "mortgage", "invoice"),
    ),
    "gardening": (
        ("grow", "plant"),
        ("tomatoes", "compost", "seeds", "soil", "pruning", "roses", "mulch", "watering"),
    ),
}

#: Risky lexicon: each counts against harmlessness wherever it appears.
RISKY_WORDS: tuple[str, ...] = (
    "dangerous", "illegal", "toxic", "overdose", "gamble", "reckless",
    "unlicensed", "poison", "explosive", "bypass", "smuggle", "untested",
)

#: Words that pad responses; they carry no score.
FILLER_WORDS: tuple[str, ...] = (
    "you", "should", "try", "the", "some", "with", "then", "just", "always", "first",
    "more", "it",
)

#: Prompt templates; ``{verb}`` is one of the topic's verbs, ``{words}`` its topic words
#: joined as ``"a b and c"``.
PROMPT_TEMPLATES: tuple[str, ...] = (
    "how do i {verb} {words} ?",
    "what is the best way to {verb} {words} ?",
    "can you help me {verb} {words} ?",
    "how should i {verb} {words} ?",
    "any tips on {words} ?",
)

MIN_WORDS = 3
MAX_WORDS = 12
OBJECTIVES: tuple[str, ...] = ("helpfulness", "harmlessness", "brevity")

_TOPIC_OF_WORD = {word: topic for topic, (_, words) in TOPICS.items() for word in words}
_RISKY = frozenset(RISKY_WORDS)


@dataclass(frozen=True)
class Prompt:
    """One prompt: its text, topic, the topic words it names, and its index in the task."""

    text: str
    topic: str
    topic_words: tuple[str, ...]
    index: int


def vocabulary() -> list[str]:
    """Every word any prompt or candidate response can contain, sorted."""
    words = set(RISKY_WORDS) | set(FILLER_WORDS) | set(_TOPIC_OF_WORD)
    words |= {verb for verbs, _ in TOPICS.values() for verb in verbs}
    for template in PROMPT_TEMPLATES:
        words |= set(template.replace("{verb}", "").replace("{words}", "and").split())
    return sorted(words)


def response_vocabulary() -> frozenset[str]:
    """The words a response may contain: topic, risky and filler words."""
    return frozenset(_TOPIC_OF_WORD) | _RISKY | frozenset(FILLER_WORDS)


def is_well_formed(response: str) -> bool:
    """True for 3 to 12 words, all from :func:`response_vocabulary`."""
    words = response.split()
    allowed = response_vocabulary()
    return MIN_WORDS <= len(words) <= MAX_WORDS and all(word in allowed for word in words)


# ----------------------------------------------------------------------------- scorers


def prompt_topic_words(prompt: Prompt | str) -> tuple[str, ...]:
    """The topic words a prompt names, in order, without repeats (read from its text)."""
    text = _text(prompt)
    words = tuple(dict.fromkeys(w for w in text.split() if w in _TOPIC_OF_WORD))
    if not words:
        raise ValueError(f"prompt: names no topic word: {text!r}")
    return words


def helpfulness(prompt: Prompt | str, response: str) -> float:
    """Fraction of the prompt's topic words that the response contains."""
    wanted = prompt_topic_words(prompt)
    present = set(response.split())
    return sum(word in present for word in wanted) / len(wanted)


def harmlessness(response: str) -> float:
    """``exp(-r)``, ``r`` = number of risky words in the response (repeats count)."""
    return math.exp(-sum(word in _RISKY for word in response.split()))


def brevity(response: str) -> float:
    """``1 - min(n, 12) / 12`` for a response of ``n`` words."""
    return 1.0 - min(len(response.split()), MAX_WORDS) / MAX_WORDS


SCORERS: dict[str, Callable[[Prompt | str, str], float]] = {
    "helpfulness": helpfulness,
    "harmlessness": lambda prompt, response: harmlessness(response),
    "brevity": lambda prompt, response: brevity(response),
}


def score(prompt: Prompt | str, response: str, objectives=("helpfulness", "harmlessness")) -> np.ndarray:
    """``(K,)``: the response's score on each named objective."""
    names = check_objectives(objectives)
    return np.array([SCORERS[name](prompt, response) for name in names], dtype=np.float64)


def preference(
    prompt: Prompt | str, a: str, b: str, objective: str, temperature: float = 0.1
) -> float:
    """``P(a > b)`` on one objective: ``sigmoid((s(a) - s(b)) / temperature)``;
    temperature 0 gives 1, 0.5 (tie) or 0."""
    (name,) = check_objectives((objective,))
    t = check_nonnegative(temperature, "temperature")
    diff = SCORERS[name](prompt, a) - SCORERS[name](prompt, b)
    return _oracle(np.float64(diff), t).item()


def preference_matrix(
    prompt: Prompt | str, responses, objectives=("helpfulness", "harmlessness"), temperature: float = 0.1
) -> np.ndarray:
    """``(K, N, N)``: ``P[k, i, j] = P_k(responses[i] > responses[j])``, diagonal 0.5."""
    t = check_nonnegative(temperature, "temperature")
    scores = np.stack([score(prompt, r, objectives) for r in responses], axis=1)
    return _oracle(scores[:, :, None] - scores[:, None, :], t)


def check_objectives(objectives) -> tuple[str, ...]:
    """Validate a sequence of objective names (known, unique, at least one)."""
    names = (objectives,) if isinstance(objectives, str) else tuple(objectives)
    if not names:
        raise ValueError("objectives: name at least one objective")
    for name in names:
        if name not in SCORERS:
            raise ValueError(f"objectives: unknown objective {name!r}; choose from {OBJECTIVES}")
    if len(set(names)) != len(names):
        raise ValueError(f"objectives: repeated name in {names}")
    return names


def _oracle(diff: np.ndarray, temperature: float) -> np.ndarray:
    """Preference probability from a score difference (sign step at temperature 0)."""
    if temperature == 0.0:
        return 0.5 + 0.5 * np.sign(diff)
    return expit(diff / temperature)


def _text(prompt: Prompt | str) -> str:
    """A prompt's text."""
    return prompt.text if isinstance(prompt, Prompt) else prompt


# --------------------------------------------------------------------------- generators


def make_prompt(rng: np.random.Generator, words_per_prompt: int, index: int) -> Prompt:
    """Draw a topic, a template, a verb and ``words_per_prompt`` distinct topic words."""
    topic = list(TOPICS)[rng.integers(len(TOPICS))]
    verbs, topic_words = TOPICS[topic]
    chosen = tuple(rng.choice(topic_words, size=words_per_prompt, replace=False).tolist())
    joined = chosen[0] if len(chosen) == 1 else " ".join(chosen[:-1]) + " and " + chosen[-1]
    template = PROMPT_TEMPLATES[rng.integers(len(PROMPT_TEMPLATES))]
    text = template.format(verb=verbs[rng.integers(len(verbs))], words=joined)
    return Prompt(text=text, topic=topic, topic_words=chosen, index=index)


def compose_response(
    prompt: Prompt | str, n_covered: int, n_risky: int, n_words: int, rng: np.random.Generator
) -> str:
    """A response with exactly ``n_covered`` of the prompt's topic words, ``n_risky``
    distinct risky words and ``n_words`` words in all (the rest filler).

    The first ``min(n_covered, n_risky)`` topic words are each preceded by a risky word
    (``"toxic garlic"``); the other topic and risky words stand alone. Phrases come in
    random order, filler words fall in random gaps between them.
    """
    topic_words = prompt_topic_words(prompt)
    c = check_int(n_covered, "n_covered", 0)
    r = check_int(n_risky, "n_risky", 0)
    n = check_int(n_words, "n_words", MIN_WORDS)
    if c > len(topic_words):
        raise ValueError(f"n_covered: the prompt names only {len(topic_words)} topic words, got {c}")
    if r > len(RISKY_WORDS):
        raise ValueError(f"n_risky: the lexicon has only {len(RISKY_WORDS)} words, got {r}")
    if not c + r <= n <= MAX_WORDS:
        raise ValueError(f"n_words: must lie in [{max(MIN_WORDS, c + r)}, {MAX_WORDS}], got {n}")
    covered = rng.choice(topic_words, size=c, replace=False).tolist()
    risky = rng.choice(RISKY_WORDS, size=r, replace=False).tolist()
    phrases = [risky[i : i + 1] + covered[i : i + 1] for i in range(max(c, r))]
    phrases = [phrases[i] for i in rng.permutation(len(phrases))]
    gaps = rng.integers(0, len(phrases) + 1, size=n - c - r)
    fillers = rng.choice(FILLER_WORDS, size=n - c - r).tolist()
    words: list[str] = []
    for slot in range(len(phrases) + 1):
        words += [f for f, g in zip(fillers, gaps) if g == slot]
        words += phrases[slot] if slot < len(phrases) else []
    return " ".join(words)


def draw_candidate(
    prompt: Prompt | str, risk_coupling: float, rng: np.random.Generator
) -> str:
    """One candidate with the built-in conflict: coverage ``c`` uniform in ``0..T``,
    ``Binomial(c, risk_coupling)`` risky words, length uniform in
    ``[max(3, words used), 12]``."""
    c = int(rng.integers(len(prompt_topic_words(prompt)) + 1))
    r = int(rng.binomial(c, risk_coupling))
    n = int(rng.integers(max(MIN_WORDS, c + r), MAX_WORDS + 1))
    return compose_response(prompt, c, r, n, rng)


# --------------------------------------------------------------------------------- task


@dataclass(frozen=True)
class TextTask:
    """A seeded instance of the text task: ``n_prompts`` prompts, ``n_candidates``
    candidate responses each, scored on ``objectives`` (objective 0 is MOPO's primary),
    with preference oracles at ``temperature``."""

    n_prompts: int = 20
    n_candidates: int = 8
    objectives: tuple[str, ...] = ("helpfulness", "harmlessness")
    temperature: float = 0.1
    seed: int = 0
    words_per_prompt: int = 3
    risk_coupling: float = 0.75

    def __post_init__(self):
        check_int(self.n_prompts, "n_prompts", 1)
        check_int(self.n_candidates, "n_candidates", 2)
        check_int(self.seed, "seed", 0)
        object.__setattr__(self, "objectives", check_objectives(self.objectives))
        check_nonnegative(self.temperature, "temperature")
        n_topic = min(len(words) for _, words in TOPICS.values())
        if not 1 <= check_int(self.words_per_prompt, "words_per_prompt", 1) <= n_topic:
            raise ValueError(f"words_per_prompt: must lie in [1, {n_topic}], got {self.words_per_prompt}")
        if not 0.0 <= check_nonnegative(self.risk_coupling, "risk_coupling") <= 1.0:
            raise ValueError(f"risk_coupling: must lie in [0, 1], got {self.risk_coupling}")

    def prompts(self) -> list[Prompt]:
        """The task's ``n_prompts`` distinct prompts (indices ``0..n_prompts-1``)."""
        return list(self._prompt_table.values())

    @cached_property
    def _prompt_table(self) -> dict[str, Prompt]:
        """Prompt text -> prompt, drawn once per task instance."""
        rng = np.random.default_rng([self.seed, 0])
        found: dict[str, Prompt] = {}
        for _ in range(100 * self.n_prompts):
            prompt = make_prompt(rng, self.words_per_prompt, len(found))
            found.setdefault(prompt.text, prompt)
            if len(found) == self.n_prompts:
                return found
        raise ValueError(f"n_prompts: could not draw {self.n_prompts} distinct prompts")

    def candidates(self, prompt: Prompt | str) -> list[str]:
        """The prompt's ``n_candidates`` candidate responses (seeded by its index)."""
        prompt = self._resolve(prompt)
        rng = np.random.default_rng([self.seed, 1, prompt.index])
        return [draw_candidate(prompt, self.risk_coupling, rng) for _ in range(self.n_candidates)]

    def corpus(self) -> list[str]:
        """SFT texts ``"<prompt> <response>"``, every candidate of every prompt."""
        return [f"{p.text} {r}" for p in self.prompts() for r in self.candidates(p)]

    def scores(self, prompt: Prompt | str) -> np.ndarray:
        """``(K, n_candidates)``: each candidate's score on each objective."""
        prompt = self._resolve(prompt)
        return np.stack([score(prompt, r, self.objectives) for r in self.candidates(prompt)], axis=1)

    def sample_pairs(self, n_pairs_per_prompt: int, seed: int | None = None, soft: bool = False) -> list[dict]:
        """Preference records ``{"prompt", "response_a", "response_b", "labels"}``.

        Each pair is two distinct candidates drawn uniformly; ``labels[objective]`` is 1.0
        when ``response_a`` wins, drawn Bernoulli from the oracle (or the oracle's
        probability itself when ``soft``; the pairs are the same either way).
        ``seed`` defaults to the task's seed.
        """
        n_pairs = check_int(n_pairs_per_prompt, "n_pairs_per_prompt", 1)
        rng = np.random.default_rng([self.seed if seed is None else check_int(seed, "seed", 0), 2])
        records = []
        for prompt in self.prompts():
            responses = self.candidates(prompt)
            prefs = preference_matrix(prompt, responses, self.objectives, self.temperature)
            for _ in range(n_pairs):
                a, b = rng.choice(len(responses), size=2, replace=False)
                probs, draws = prefs[:, a, b], rng.random(len(self.objectives))
                labels = probs if soft else (draws < probs).astype(np.float64)
                records.append(
                    {
                        "prompt": prompt.text,
                        "response_a": responses[a],
                        "response_b": responses[b],
                        "labels": {k: float(v) for k, v in zip(self.objectives, labels)},
                    }
                )
        return records

    def exact_win_rates(self, prompt: Prompt | str, responses, behaviour=None) -> np.ndarray:
        """``(K, N)``: each response's exact win-rate against the others in the pool.

        ``w[k, i] = sum_{j != i} mu_j P_k(i > j) / sum_{j != i} mu_j``: self-comparison
        is excluded (MOPO.md, online mode), ``mu`` is uniform unless ``behaviour`` (N,)
        gives pool weights.
        """
        responses = list(responses)
        n = len(responses)
        if n < 2:
            raise ValueError(f"responses: need at least 2 to compare, got {n}")
        mu = _check_behaviour(behaviour, n)
        prefs = preference_matrix(prompt, responses, self.objectives, self.temperature)
        others = np.broadcast_to(mu, (n, n)) * (1.0 - np.eye(n))
        mass = others.sum(axis=1)
        if np.any(mass <= 0):
            raise ValueError("behaviour: some response has no weight left on the others")
        return np.einsum("kij,ij->ki", prefs, others) / mass

    def _resolve(self, prompt: Prompt | str) -> Prompt:
        """The task's :class:`Prompt` for a prompt or its text."""
        text = _text(prompt)
        if text not in self._prompt_table:
            raise ValueError(f"prompt: not one of this task's prompts: {text!r}")
        return self._prompt_table[text]


def _check_behaviour(behaviour, n: int) -> np.ndarray:
    """Uniform ``(n,)`` for None, otherwise nonnegative finite weights of length n."""
    if behaviour is None:
        return np.full(n, 1.0 / n)
    mu = np.asarray(behaviour, dtype=np.float64)
    if mu.shape != (n,) or not np.all(np.isfinite(mu)) or np.any(mu < 0):
        raise ValueError(f"behaviour: expected {n} finite nonnegative weights, got {behaviour!r}")
    return mu
