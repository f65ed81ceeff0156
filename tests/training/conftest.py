"""Tests of the training layer (mopo_core/training): the job queue and its workers, dataset and
text-task runs, killed and resumed runs, hostile checkpoints, bad training inputs, and stores and
checkpoints written before issue 12 (``tests/fixtures/written_before_issue12``). Every module here
runs with one torch thread (``one_thread``, from ``tests/lm_fixtures.py``)."""
import pytest

from tests.lm_fixtures import one_thread as _one_thread

one_thread = pytest.fixture(scope="module", autouse=True, name="one_thread")(_one_thread)
