"""Tests of the language-model layer (mopo_core/lm): config, losses, the trainer and its modes,
distributed training, models, checkpoints, the model registry and preference models. Every module
here runs with one torch thread (``one_thread``, from ``tests/lm_fixtures.py``); the tiny models and
data are built by ``tests/lm_fixtures.py``."""
import pytest

from tests.lm_fixtures import one_thread as _one_thread

one_thread = pytest.fixture(scope="module", autouse=True, name="one_thread")(_one_thread)
