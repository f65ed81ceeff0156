"""Tests of the data layer (mopo_core/data): preference files, public dataset formats, the readers
fuzzed and given bad inputs. No fixtures or skip rules of its own (the public-format samples are
read from ``shared/data`` where present)."""
