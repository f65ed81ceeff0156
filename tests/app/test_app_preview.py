"""The threshold preview's presenter (app/presenters/preview.py): the summary, the table with the
page's column names, the figure (titles, axis names with units and direction, legend, π_ref and the
attainable maximum marked, achieved points drawn over the prediction) and errors naming the form field."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from app.presenters.preview import (
    FIELD_LABELS,
    achieved_points,
    preview_figure,
    preview_file,
    preview_table,
    summary_lines,
)

RECORDS = [
    {"prompt": "p1", "response_a": "x", "response_b": "y", "labels": {"helpful": 1.0, "harmless": 0.0}},
    {"prompt": "p1", "response_a": "y", "response_b": "z", "labels": {"helpful": 0.5, "harmless": 1.0}},
    {"prompt": "p2", "response_a": "u", "response_b": "v", "labels": {"helpful": 0.0, "harmless": 1.0}},
    {"prompt": "p3", "response_a": "r", "response_b": "s", "labels": {"helpful": 1.0, "harmless": 1.0}},
]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def test_summary_and_table_say_what_the_data_supports(data_file):
    result = preview_file(data_file, tau=0.08, prior=1.0)
    lines = summary_lines(result)
    assert "4 pairs over 3 prompts" in lines[0]
    assert f"exceeds {result.attainable_max[0]:.3f}" in lines[1] and "harmless" in lines[1]
    assert lines[-1].startswith(f"{int(result.table['feasible'].sum())} of {len(result.table)}")
    table = preview_table(result)
    assert list(table.columns) == ["threshold b1 (harmless)", "attainable", "λ1", "V0 helpful (primary)",
                                   "V1 harmless", "KL to π_ref (nats)"]


def test_the_figure_marks_reference_edge_and_achieved_points(data_file):
    result = preview_file(data_file, tau=0.08)
    runs = achieved_points([{"label": "mopo b1=0.6", "thresholds": [0.6], "values": [0.55, 0.61]},
                            {"label": "no point yet", "thresholds": [0.6], "values": None}])
    assert runs == [{"label": "mopo b1=0.6", "b": 0.6, "values": [0.55, 0.61]}]
    fig = preview_figure(result, achieved=runs)
    names = [trace.name for trace in fig.data]
    assert any(name.startswith("predicted helpful") for name in names)
    assert any(name.startswith("infeasible b1") for name in names)  # the default grid ends at the edge
    assert any(name.startswith("π_ref") for name in names)
    edge = next(t for t in fig.data if t.name.startswith("attainable max of harmless"))
    assert np.allclose(edge.x, result.attainable_max[0])
    reference = next(t for t in fig.data if t.name.startswith("π_ref"))
    assert np.allclose([reference.x[0], reference.y[0]], result.reference_values[[1, 0]])
    assert any(name.startswith("achieved: mopo b1=0.6") for name in names)
    assert "Threshold preview" in fig.layout.title.text and "τ = 0.08" in fig.layout.title.text
    assert "win-rate against the file's responses" in fig.layout.xaxis.title.text
    assert "stricter" in fig.layout.xaxis.title.text and "↑ better" in fig.layout.yaxis.title.text
    assert fig.layout.legend.orientation == "h"


@pytest.mark.parametrize("kwargs, field", [({"tau": 0.0}, "tau"), ({"prior": -1.0}, "prior"),
                                           ({"tau": float("nan")}, "tau"),
                                           ({"thresholds": [[0.5, 0.6]]}, "thresholds")])
def test_bad_values_name_the_form_field(data_file, kwargs, field):
    with pytest.raises(ValueError, match="^" + re.escape(FIELD_LABELS[field])):
        preview_file(data_file, **kwargs)


def test_a_bad_file_names_the_field_the_file_and_the_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps({**RECORDS[1], "labels": {"helpful": 2}}) + "\n")
    with pytest.raises(ValueError, match=r"(?s)^Preference file: .*bad\.jsonl: row 2: field 'labels.helpful'"):
        preview_file(path)
    with pytest.raises(ValueError, match=r"^Preference file: .*missing\.jsonl"):
        preview_file(tmp_path / "missing.jsonl")
