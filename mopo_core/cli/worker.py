"""The job queue's worker process: ``python -m mopo_core.cli.worker --store FILE`` runs the
store's queued training jobs one at a time and exits when none is left
(:func:`mopo_core.training.jobs.run_worker`; exit status
:data:`~mopo_core.training.jobs.EXIT_ANOTHER_WORKER` when another live worker serves the
store). The app starts it with :func:`mopo_core.training.jobs.ensure_worker`; started by hand
it has no owner and serves until the queue is empty."""
from __future__ import annotations

import argparse
import sys

from mopo_core.training.jobs import run_worker


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mopo_core.cli.worker",
                                     description="Run the store's queued training jobs one at a time; exit when none "
                                                 "is left.")
    parser.add_argument("--store", required=True, help="run store SQLite file")
    return run_worker(parser.parse_args(argv).store)


if __name__ == "__main__":
    sys.exit(main())
