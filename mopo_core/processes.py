"""Processes identified by pid *and* start time, so that a reused pid (a container restart
numbers processes from 1 again) is not mistaken for the process that had it before. The run
store's run owners (:func:`mopo_core.runs.claim_run`) and the job queue's workers and
apps (:mod:`mopo_core.training.jobs`) record processes this way."""
from __future__ import annotations

import os
from pathlib import Path


def process_start(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, ``/proc/<pid>/stat`` field 22);
    ``None`` when it does not exist, is a zombie, or there is no ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3
    return None if fields[0] in ("Z", "X") else int(fields[19])


def alive(pid: int, start: int | None) -> bool:
    """Whether process ``pid`` runs and is the one that started at ``start`` (when known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        pass
    return start is None or process_start(pid) == start
