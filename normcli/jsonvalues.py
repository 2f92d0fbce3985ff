"""Statistics as JSON values, shared by the saved-statistics file and the JSON reports."""

from __future__ import annotations

import math

import numpy as np

from normcli.layout import Layout
from normcli.scopes import SCOPES


def json_values(values: np.ndarray, scope: str, layout: str, sample_shape) -> list:
    """Per-key values for JSON: laid out as the keys' shape for a scope whose keys are positions
    (pixel: like one sample), a flat list otherwise; NaN and inf (a key without values) become null."""
    values = np.asarray(values)
    if SCOPES[scope].by_position:
        values = SCOPES[scope].key_grid(values, Layout(layout), sample_shape)
    return finite_or_null(values.tolist())


def finite_or_null(value):
    """`value` (a number or nested lists of them) with NaN and inf as None, which JSON writes as null."""
    if isinstance(value, list):
        return [finite_or_null(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def quantile_label(q: float) -> str:
    """A percentile's name, as its q is written: "1", "99.8" (JSON keys, CSV and table columns)."""
    q = float(q)
    return str(int(q)) if q.is_integer() else repr(q)
