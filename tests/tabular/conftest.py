"""Tests of the tabular engine (mopo_core/tabular): the robust and iterative solvers, the barrier's
properties, the baselines and bad solver inputs. Reference solves are in ``tests/reference_solvers.py``.
No fixtures or skip rules of its own."""
