"""Fixtures for every test: the fitted text-task references are cached in one temporary folder
per test session (``$MOPO_REFERENCE_CACHE``, :mod:`mopo_core.training.reference_cache`), never
in the user's models folder; subprocesses (workers, benches, the app's server) inherit it."""
import os

import pytest

from mopo_core.lm.registry import CACHE_ENV  # light: no torch at collection


@pytest.fixture(scope="session", autouse=True)
def reference_cache_folder(tmp_path_factory):
    """The session's reference cache folder, set as ``$MOPO_REFERENCE_CACHE`` for the session."""
    folder = tmp_path_factory.mktemp("reference-cache")
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if previous is None:
        del os.environ[CACHE_ENV]
    else:
        os.environ[CACHE_ENV] = previous
