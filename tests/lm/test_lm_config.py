"""The training config without torch (mopo_core/lm/config.py): it imports without torch, there
is one list of methods, and a stored config written before later fields existed still matches."""
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from mopo_core.lm.config import METHODS, PAIRWISE_METHODS, WEIGHTED_METHODS, TrainConfig, same_config

ROOT = Path(__file__).resolve().parents[2]


def test_train_config_imports_without_torch():
    code = "import sys, mopo_core.lm.config; assert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_method_groups_are_methods():
    assert set(PAIRWISE_METHODS) <= set(METHODS) and set(WEIGHTED_METHODS) <= set(PAIRWISE_METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_has_a_valid_config(method):
    weights = (0.5, 0.5) if method in WEIGHTED_METHODS else None
    TrainConfig(method=method, objective_weights=weights).validate(2)


def test_weighted_methods_need_their_weights():
    for method in WEIGHTED_METHODS:
        with pytest.raises(ValueError, match="objective_weights"):
            TrainConfig(method=method).validate(2)


def test_a_stored_config_without_later_fields_is_the_same_config():
    stored = asdict(TrainConfig(steps=7))
    del stored["kl_prompts"], stored["eps"]  # written before these existed: their defaults apply
    assert same_config(stored, TrainConfig(steps=7))
    assert not same_config(stored, TrainConfig(steps=8))
