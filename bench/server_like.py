"""Streamlit's AppTest made to run a page as the app's server does, for the benches that time a rerun's
server time with it (bench/app_rerun.py, bench/compare_scale.py).

Two differences are removed:

- AppTest compiles the page script (Streamlit's "magic" rewrite of its syntax tree, then ``compile``) on
  every run, with a new ``ScriptCache`` each time; the server compiles a page once per process and reuses
  the bytecode. :func:`compiled_once` gives AppTest's runs one shared cache; :func:`compile_ms` times the
  compilation that is then left out, so a bench can print it beside its reruns.
- The server's entry point (app/main.py) freezes the heap after its first page run
  (:func:`app.shared.freeze_startup_heap`); AppTest runs the page alone, so a bench calls it after its
  cold start.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path


@contextlib.contextmanager
def compiled_once():
    """Within the block, every AppTest run shares one ``ScriptCache`` (the page is compiled on the first run
    only), as the server's runs do."""
    import streamlit.testing.v1.app_test as app_test
    import streamlit.testing.v1.local_script_runner as local_script_runner
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache

    shared = ScriptCache()
    saved = app_test.ScriptCache, local_script_runner.ScriptCache
    app_test.ScriptCache = local_script_runner.ScriptCache = lambda: shared
    try:
        yield shared
    finally:
        app_test.ScriptCache, local_script_runner.ScriptCache = saved


def compile_ms(page: str | Path, repeats: int = 3) -> float:
    """Median milliseconds to compile ``page`` as Streamlit does (magic rewrite, then ``compile``): what each
    AppTest run would pay on top of the server's rerun without :func:`compiled_once`."""
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ScriptCache().get_bytecode(str(page))
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def after_first_run():
    """What the server does after its first page run (app/main.py): freeze the heap."""
    from app.shared import freeze_startup_heap

    freeze_startup_heap()
