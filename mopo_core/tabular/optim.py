"""The one optimiser every gradient-trained tabular method uses (Algorithm 1's weighted
behaviour cloning and the DPO-family baselines), so that methods differ only in their loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from mopo_core.validation import check_nonnegative, check_positive


@dataclass
class AdamConfig:
    """Adam hyper-parameters; defaults suit per-prompt softmax logits."""

    lr: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def validate(self, name: str = "adam") -> None:
        """ValueError naming ``name.field`` unless lr > 0, 0 <= beta1, beta2 < 1 and eps > 0 (all finite)."""
        check_positive(self.lr, f"{name}.lr")
        check_positive(self.eps, f"{name}.eps")
        for field in ("beta1", "beta2"):
            value = check_nonnegative(getattr(self, field), f"{name}.{field}")
            if value >= 1:
                raise ValueError(f"{name}.{field}: must be < 1, got {value}")


class Adam:
    """Adam on one numpy parameter array (updated in place).

    Adam is element-wise, so a batch of independent problems stacked along a leading axis
    (for example a grid of weights) trains exactly as if each were trained alone.
    """

    def __init__(self, params: np.ndarray, config: AdamConfig | None = None):
        self.params = params
        self.config = config or AdamConfig()
        self.config.validate()
        self._m = np.zeros_like(params)
        self._v = np.zeros_like(params)
        self._t = 0

    def step(self, grad: np.ndarray) -> None:
        c = self.config
        self._t += 1
        self._m = c.beta1 * self._m + (1 - c.beta1) * grad
        self._v = c.beta2 * self._v + (1 - c.beta2) * grad * grad
        m_hat = self._m / (1 - c.beta1**self._t)
        v_hat = self._v / (1 - c.beta2**self._t)
        self.params -= c.lr * m_hat / (np.sqrt(v_hat) + c.eps)


def minimise(
    loss_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x0: np.ndarray,
    steps: int,
    config: AdamConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``steps`` Adam steps from ``x0``; return ``(x, loss_trace)`` (trace shape ``(steps,)``)."""
    x = np.array(x0, dtype=np.float64, copy=True)
    opt = Adam(x, config)
    trace = np.empty(steps)
    for t in range(steps):
        loss, grad = loss_and_grad(x)
        trace[t] = loss
        opt.step(grad)
    return x, trace
