"""Tests of the Streamlit app (app/) through Streamlit's AppTest, without a browser: the pages,
their presenters (teaching, model session, Compare with LM runs). Figures are checked with
``tests/app_support.py``. Every module here runs with one torch thread (``one_thread``, from
``tests/lm_fixtures.py``). The browser tests are in tests/browser."""
import pytest

from tests.lm_fixtures import one_thread as _one_thread

one_thread = pytest.fixture(scope="module", autouse=True, name="one_thread")(_one_thread)
