"""Objects whose unpickling runs code (creates a marker file): what a hostile checkpoint holds.
Shared by the training tests that check nothing in a checkpoint is ever executed."""
import os
import pathlib
from pathlib import Path


class TouchOnUnpickle:
    """Unpickling this calls ``Path(marker).touch()``: code run from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


class SystemOnUnpickle:
    """Unpickling this runs a shell command that creates the marker."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)
