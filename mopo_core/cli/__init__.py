"""The command line (``python -m mopo_core ...``): the only place with argparse."""
