"""LoRA adapters (peft): their settings and the wrapper that makes only the adapters trainable.
Used when a model is loaded or built for training (:mod:`mopo_core.lm.models`) and when its
training memory is estimated (:mod:`mopo_core.lm.checkpoints`)."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

from transformers.pytorch_utils import Conv1D

from mopo_core.lm.devices import seeded


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter settings for peft: rank ``r``, scale ``alpha``, adapter dropout and the
    modules to adapt (``"all-linear"``: every linear layer except the output head)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"


def apply_lora(model, settings: LoraSettings, seed: int | None = None):
    """Wrap a causal LM with peft LoRA adapters: only adapter weights stay trainable.

    Adapters start at zero (the wrapped model computes what the base model did); their
    random down-projections are drawn under torch seed ``seed`` (None: the global RNG)."""
    from peft import LoraConfig, TaskType, get_peft_model

    targets = settings.target_modules
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()),  # GPT-2 style layers
    )
    with seeded(seed) if seed is not None else nullcontext():
        return get_peft_model(model, config)
