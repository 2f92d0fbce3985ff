"""The saved-statistics JSON file: write, read, validate, check against data, merge.

    {"normcli_stats": 1, "per": "channel", "layout": "NHWC", "sample_shape": [32, 32, 1],
     "count": [...], "mean": [...], "m2": [...], "var": [...], "min": [...], "max": [...],
     "ddof": 0, "inputs": [...]}

Arrays are shaped like the scope's keys (global: 1, channel: C, pixel: one sample's shape:
Scope.key_shape for scopes of keys by position, a flat list otherwise).
Integer data keep min and max as JSON integers. What an exact merge needs comes too, so that
files merge exactly as one run's blocks do: float data their "shift" (a value near each key's
data) and "shifted_mean" (the mean of x - shift), about which "m2" is summed; integer data their
exact "sum" and "sum_squares" (JSON integers). Files saved without these (before they were
added, same schema) are still read, and merge by Chan et al. on their rounded means.

Percentiles, where taken (`stats --percentiles`, `standardize --robust`, `normalize
--percentiles`), are one more field, which older readers pass over:

    "percentiles": {"q": [25.0, 50.0, 75.0], "method": "linear", "values": [[...], ...]}

`values` holds one list per key, one value per q (null for NaN). They do not merge: a quantile of
several files is not a function of each file's quantiles.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from normcli.errors import OutputError, StatsFileError, UsageMismatch, from_os_error
from normcli.jsonvalues import finite_or_null, json_values
from normcli.layout import LAYOUTS, Layout
from normcli.moments import FloatMoments, IntegerSums, Moments, python_ints, whole_numbers
from normcli.scopes import SCOPES

SCHEMA_VERSION = 1
_ARRAYS = ("count", "mean", "m2", "min", "max")
_EXTRA_ARRAYS = ("running_mean", "running_var")
_FLOAT_SOURCE = ("shift", "shifted_mean")  # FloatMoments' shift and mean, relative to it
_INTEGER_SOURCE = ("sum", "sum_squares")  # IntegerSums' s1 and s2
_EXTRA_VALUES = ("momentum", "batches", "encoding", "range", "order", "shuffle", "percentiles", "map")
MAPS = ("robust", "stretch")  # "map": what a file's percentiles were fitted for (standardize --robust, normalize)


@dataclass
class StatsFile:
    per: str
    layout: str
    sample_shape: tuple
    moments: Moments
    ddof: int = 0
    inputs: list[str] = field(default_factory=list)
    # batchnorm: running_mean, running_var, momentum, batches; 8/16-bit outputs: encoding
    extra: dict = field(default_factory=dict)

    def shaped(self, values: np.ndarray) -> list:
        """Per-key values as nested lists shaped like the scope (JSON null for NaN and inf)."""
        return json_values(values, self.per, self.layout, self.sample_shape)

    def to_json(self) -> dict:
        doc = {"normcli_stats": SCHEMA_VERSION, "per": self.per, "layout": self.layout,
               "sample_shape": list(self.sample_shape)}
        for name in _ARRAYS:
            doc[name] = self.shaped(getattr(self.moments, name))
            if name == "m2":
                doc["var"] = self.shaped(self.moments.var(self.ddof))
        source = self.moments.source
        if isinstance(source, FloatMoments):
            doc["shift"], doc["shifted_mean"] = self.shaped(source.shift), self.shaped(source.mean)
        elif isinstance(source, IntegerSums):
            doc["sum"], doc["sum_squares"] = self.shaped(source.s1), self.shaped(source.s2)
        doc["ddof"] = self.ddof
        doc["inputs"] = list(self.inputs)
        for name, value in self.extra.items():
            doc[name] = self.shaped(value) if name in _EXTRA_ARRAYS else value
        return doc


def write(path: str, stats: StatsFile, outputs, *, force: bool = False, inputs=()) -> None:
    """Write to a temporary file beside `path`, staged in the run's `outputs` (sinks.Outputs): it
    is renamed into place as they commit, so that every output of the run appears together."""
    from normcli.sinks import check_target

    check_target(path, inputs, force, folder=False)
    temp = outputs.stage(path)
    try:
        with open(temp, "w") as f:
            json.dump(stats.to_json(), f, indent=1)
            f.write("\n")
    except OSError as error:
        raise from_os_error(error, path, OutputError) from None


def read(path: str) -> StatsFile:
    """Read and validate a statistics file; any defect is a one-line StatsFileError."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise StatsFileError("no such statistics file", path) from None
    except (OSError, ValueError) as exc:
        raise StatsFileError(f"not a readable JSON statistics file: {exc}", path) from None
    except RecursionError:
        raise StatsFileError("not a readable JSON statistics file: nested too deeply", path) from None
    if not isinstance(doc, dict) or doc.get("normcli_stats") != SCHEMA_VERSION:
        raise StatsFileError(f"not a normcli statistics file (schema {SCHEMA_VERSION})", path)
    per, layout = doc.get("per"), doc.get("layout")
    if per not in SCOPES or layout not in LAYOUTS:
        raise StatsFileError(f"unknown scope {per!r} or layout {layout!r}", path)
    try:
        sample_shape = tuple(_dimension(d) for d in doc["sample_shape"])
        if len(sample_shape) != len(layout) - 1:
            raise ValueError(f"sample_shape {list(sample_shape)} does not fit layout {layout}")
        keys = _keys(per, layout, sample_shape, doc)
        def keyed(name):
            return _keyed(_flat(doc[name], keys, name), per, layout, sample_shape)

        arrays = {name: keyed(name) for name in _ARRAYS}
        if "var" in doc:
            _flat(doc["var"], keys, "var")  # derived from m2, but a file of the wrong length is a damaged one
        extra = {name: keyed(name) for name in _EXTRA_ARRAYS if name in doc}
        for name in _EXTRA_VALUES:
            if name in doc:
                extra[name] = doc[name]
        _check_values(arrays, extra)
        _check_percentiles(extra.get("percentiles"), len(arrays["count"]))
        if "map" in extra and (extra["map"] not in MAPS or "percentiles" not in extra):
            raise ValueError(f"'map' is {extra['map']!r}, not one of {', '.join(MAPS)} with its 'percentiles'")
        moments = _moments(doc, arrays, keyed)
        ddof = doc.get("ddof", 0)
        if ddof not in (0, 1):
            raise ValueError(f"ddof {ddof!r} is neither 0 nor 1")
        inputs = [str(i) for i in doc.get("inputs", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise StatsFileError(f"malformed statistics file: {exc}", path) from None
    except RecursionError:
        raise StatsFileError("malformed statistics file: nested too deeply", path) from None
    return StatsFile(per, layout, sample_shape, moments, ddof, inputs, extra)


def _dimension(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"'sample_shape' holds {value!r}, not a positive whole number (or null)")
    return value


def _check_values(arrays: dict, extra: dict) -> None:
    """Numbers that no measurement gives are refused, naming the field: a count that is negative or
    not whole, a non-finite mean/M2/min/max where there were values, negative M2, min above max."""
    count = arrays["count"].astype(np.float64)
    if not (np.isfinite(count).all() and (count >= 0).all() and (count == np.floor(count)).all()
            and (count < 2.0**63).all()):
        raise ValueError("'count' holds a value that is not a whole number >= 0")
    measured = count > 0
    for name in ("mean", "m2", "min", "max"):
        if arrays[name].dtype.kind == "f" and not np.isfinite(arrays[name][measured]).all():
            raise ValueError(f"'{name}' holds NaN or Infinity where count > 0")
    if (arrays["m2"][measured] < 0).any():
        raise ValueError("'m2' holds a negative value")
    if (arrays["min"][measured] > arrays["max"][measured]).any():
        raise ValueError("'min' is above 'max'")
    for name in _EXTRA_ARRAYS:
        if name in extra and not np.isfinite(extra[name]).all():
            raise ValueError(f"'{name}' holds NaN or Infinity")
    if "running_var" in extra and (extra["running_var"] < 0).any():
        raise ValueError("'running_var' holds a negative value")
    momentum = extra.get("momentum")
    if momentum not in (None, "cumulative") and (isinstance(momentum, bool) or not isinstance(momentum, (int, float))
                                                 or not 0 <= momentum <= 1):
        raise ValueError(f"'momentum' is {momentum!r}, not a number in [0, 1] or 'cumulative'")
    out_range = extra.get("range")
    if out_range is not None and not (isinstance(out_range, list) and len(out_range) == 2
                                      and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and math.isfinite(v) for v in out_range)
                                      and out_range[0] < out_range[1]):
        raise ValueError(f"'range' is {out_range!r}, not [LO, HI] with finite LO < HI")
    batches = extra.get("batches")
    if batches is not None and (isinstance(batches, bool) or not isinstance(batches, int) or batches < 0):
        raise ValueError(f"'batches' is {batches!r}, not a whole number >= 0")


def percentiles_record(q, method: str, values) -> dict:
    """The file's "percentiles" field: percentiles `q` by numpy's `method`, `values[k]` key k's."""
    return {"q": [float(p) for p in q], "method": method,
            "values": [finite_or_null(np.asarray(v).tolist()) for v in values]}


def saved_percentiles(stats: StatsFile, path: str, q) -> np.ndarray:
    """The file's percentiles `q` per key, (keys, len(q)) float64 (NaN for null): an error if the
    file holds none, or not these."""
    record = stats.extra.get("percentiles")
    held = [] if record is None else record["q"]
    missing = [p for p in q if float(p) not in held]
    if missing:
        raise StatsFileError(f"holds no percentile {', '.join(f'{p:g}' for p in missing)}; save them with "
                             "--save-stats from a run that takes them", path)
    values = np.array(_none_to_nan(record["values"]), np.float64).reshape(len(record["values"]), len(held))
    return values[:, [held.index(float(p)) for p in q]]


def _check_percentiles(record, keys: int) -> None:
    """A "percentiles" field as percentiles_record writes it: q in [0, 100], numpy's method names,
    one list of a number (or null) per q for each key."""
    from normcli.options import QUANTILE_METHODS

    if record is None:
        return
    if not isinstance(record, dict) or record.get("method") not in QUANTILE_METHODS:
        raise ValueError("'percentiles' is not {\"q\": [...], \"method\": ..., \"values\": [...]} of a numpy method")
    q, values = record.get("q"), record.get("values")
    if not isinstance(q, list) or not q or not all(_number(v) and 0 <= v <= 100 for v in q):
        raise ValueError("'percentiles' 'q' is not a list of numbers in [0, 100]")
    if not isinstance(values, list) or len(values) != keys or not all(
            isinstance(row, list) and len(row) == len(q) and all(v is None or _number(v) for v in row)
            for row in values):
        raise ValueError(f"'percentiles' 'values' is not {keys} list(s) of {len(q)} numbers")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _keys(per: str, layout: str, sample_shape, doc) -> int:
    scope = SCOPES[per]
    if scope.by_position and None in sample_shape:
        raise ValueError(f"a {per}-scope file needs a fixed sample shape")
    return scope.keys(Layout(layout), sample_shape, len(doc["count"]) if scope.per_sample else 0)


def _flat(values, keys: int, name: str) -> np.ndarray:
    """A field's numbers as a flat array: float64, or, where every one is a JSON integer (min and max
    of integer data, exact sums), integers held exactly (whole_numbers)."""
    try:
        leaves = list(_leaves(values))
        if leaves and all(isinstance(v, int) and not isinstance(v, bool) for v in leaves):
            array = whole_numbers(leaves)
        else:
            array = np.array(_none_to_nan(values), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"'{name}' is not a list of numbers ({exc})") from None
    if array.size != keys:
        raise ValueError(f"'{name}' has {array.size} values where the scope has {keys}")
    if name in ("min", "max") and array.dtype.kind == "f" and np.isnan(array).any():
        array = np.where(np.isnan(array), np.inf if name == "min" else -np.inf, array)
    return array


def _keyed(array: np.ndarray, per: str, layout: str, sample_shape) -> np.ndarray:
    """Arrays of keys by position are stored laid out as the keys' shape (pixel: one sample's): back
    into key order, which differs from the sample's own order for NCHW (the inverse of StatsFile.shaped)."""
    if not SCOPES[per].by_position:
        return array
    return SCOPES[per].key_order(array, Layout(layout), sample_shape)


def _leaves(value):
    """The numbers of nested lists, in order (a number alone is one)."""
    if isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _moments(doc: dict, arrays: dict, keyed) -> Moments:
    """The file's moments, with the source an exact merge needs where the file holds it."""
    count = arrays["count"].astype(np.int64)
    if all(name in doc for name in _INTEGER_SOURCE):
        s1, s2 = (keyed(name) for name in _INTEGER_SOURCE)
        if s1.dtype.kind == "f" or s2.dtype.kind == "f":
            raise ValueError("'sum' and 'sum_squares' must hold whole numbers")
        if any(int(b) * int(c) < int(a) * int(a) for a, b, c in zip(s1, s2, count)):
            raise ValueError("'sum_squares' is below what 'sum' implies")
        return IntegerSums(count, python_ints(s1, len(s1)), python_ints(s2, len(s2)), arrays["min"],
                           arrays["max"]).aggregate()
    if all(name in doc for name in _FLOAT_SOURCE):
        shift, shifted = (keyed(name).astype(np.float64) for name in _FLOAT_SOURCE)
        measured = count > 0
        if not (np.isfinite(shift[measured]).all() and np.isfinite(shifted[measured]).all()):
            raise ValueError("'shift' or 'shifted_mean' holds NaN or Infinity where count > 0")
        return FloatMoments(count, np.nan_to_num(shift), np.nan_to_num(shifted), arrays["m2"], arrays["min"],
                            arrays["max"]).aggregate()
    return Moments(count, arrays["mean"], arrays["m2"], arrays["min"], arrays["max"])


def _none_to_nan(value):
    if isinstance(value, list):
        return [_none_to_nan(v) for v in value]
    return np.nan if value is None else value


def check_options(stats: StatsFile, path: str, *, per: str | None, layout: str | None) -> None:
    """With --stats-from, scope and layout come from the file: options contradicting it are usage errors."""
    if per is not None and per != stats.per:
        raise UsageMismatch(f"--per {per} contradicts {path}, which holds {stats.per} statistics; drop --per")
    if layout is not None and layout.upper() != stats.layout:
        raise UsageMismatch(f"--layout {layout} contradicts {path}, which was fitted on {stats.layout}; drop --layout")


def check_fits(stats: StatsFile, dataset, path: str) -> None:
    """A file applied to data must agree with it: scope, layout and shape (else a file error)."""
    scope = SCOPES[stats.per]
    if not scope.reapplicable:
        raise StatsFileError(f"{stats.per} statistics belong to the samples they came from; they cannot be "
                             "applied to other data", path)
    if dataset.layout.name != stats.layout:
        raise StatsFileError(f"fitted on layout {stats.layout}, but the data is {dataset.layout.name}", path)
    if not scope.by_position and scope.keys(dataset.layout, dataset.sample_shape, 0) != len(stats.moments):
        raise StatsFileError(f"fitted on {len(stats.moments)} channels, but the data has {dataset.channels}", path)
    if scope.by_position and tuple(stats.sample_shape) != tuple(dataset.sample_shape):
        raise StatsFileError(f"fitted on samples of shape {list(stats.sample_shape)}, but the data's are "
                             f"{list(dataset.sample_shape)}", path)


def merge(files: list[tuple[str, StatsFile]]) -> StatsFile:
    """Several files' statistics as one, as if measured in one run (exactly so where every file holds
    its source: see the module's docstring)."""
    name, first = files[0]
    if not SCOPES[first.per].reapplicable:
        raise StatsFileError("per-sample statistics do not merge; they belong to their own samples", name)
    for name, other in files:
        if "percentiles" in other.extra:
            raise StatsFileError("holds percentiles, which cannot be merged exactly (a quantile of several "
                                 "files is not a function of theirs); measure the files together instead", name)
    merged = first.moments
    inputs = list(first.inputs)
    for name, other in files[1:]:
        for attr in ("per", "layout", "ddof"):
            if getattr(other, attr) != getattr(first, attr):
                raise StatsFileError(f"{attr} {getattr(other, attr)} differs from {files[0][0]}'s "
                                     f"{getattr(first, attr)}", name)
        if len(other.moments) != len(merged) or (SCOPES[first.per].by_position and other.sample_shape != first.sample_shape):
            raise StatsFileError(f"shape differs from {files[0][0]}'s", name)
        merged = merged.merge(other.moments)
        inputs += other.inputs
    shape = first.sample_shape
    for _, other in files[1:]:
        shape = tuple(a if a == b else None for a, b in zip(shape, other.sample_shape))
    return StatsFile(first.per, first.layout, shape, merged, first.ddof, inputs)
