"""Helpers for app tests: read Plotly figures out of AppTest with typed arrays decoded."""
import base64
import json

import numpy as np


def _decode(obj):
    """Plotly 6+ serialises numeric arrays as {"dtype", "bdata"[, "shape"]}: turn them into lists."""
    if isinstance(obj, dict):
        if "bdata" in obj and "dtype" in obj:
            arr = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"]))
            if "shape" in obj:
                arr = arr.reshape([int(s) for s in str(obj["shape"]).split(",")])
            return arr.tolist()
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def figures(at) -> list[dict]:
    """The page's Plotly figures as dicts (data arrays decoded to lists)."""
    return [_decode(json.loads(el.proto.spec)) for el in at.get("plotly_chart")]
