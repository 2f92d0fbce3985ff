"""The arithmetic of every transform, as plain numpy on (samples, positions, channels) views.

Min-max, z-score, batch norm and their inverses are all one per-key affine map,
y = (x - shift) * scale + offset, computed in float64 and stored in the output array.
What differs is where (shift, scale, offset) come from: the whole dataset's moments
(normalize, standardize), each mini-batch's (batchnorm) or each sample's groups of
channels (groupnorm).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from normcli.errors import NormcliWarning
from normcli.layout import Layout
from normcli.moments import Moments, measure_block
from normcli.scopes import SAMPLE, Scope, scope as as_scope


@dataclass
class Affine:
    """y = (x - shift) * scale + offset, each a per-key float64 array."""

    shift: np.ndarray
    scale: np.ndarray
    offset: np.ndarray

    def apply(self, x: np.ndarray, out: np.ndarray, scope: Scope | str, clip: tuple[float, float] | None = None):
        """Write the map of the (samples, positions, channels) view `x` into `out` (same shape)."""
        for (values, into), keyed in as_scope(scope).pieces((x, out), (self.shift, self.scale, self.offset)):
            apply_broadcast(values, *keyed, into, clip)
        return out

    def rows(self, start: int, count: int) -> "Affine":
        """The keys start..start+count (the sample scope's keys are the samples)."""
        return Affine(*(a[start:start + count] for a in (self.shift, self.scale, self.offset)))

    def bounds(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each key's [low, high] lands (the map is monotone per key)."""
        with np.errstate(invalid="ignore"):
            a = (low - self.shift) * self.scale + self.offset
            b = (high - self.shift) * self.scale + self.offset
        return np.fmin(a, b), np.fmax(a, b)

    def inverse(self) -> "Affine":
        """The map back: x = (y - offset) / scale + shift (keys with scale 0 stay constant)."""
        with np.errstate(divide="ignore"):
            scale = np.where(self.scale != 0, 1.0 / np.where(self.scale != 0, self.scale, 1.0), 0.0)
        return Affine(self.offset, scale, self.shift)


def _degenerate(mask: np.ndarray, what: str, result: str) -> None:
    if mask.any():
        warnings.warn(NormcliWarning(
            f"{int(mask.sum())} of {mask.size} keys have {what}; their output is {result}"))


def minmax(moments: Moments, out_range: tuple[float, float] = (0.0, 1.0)) -> Affine:
    """Min-max scaling of each key's [min, max] onto `out_range` (as MinMaxScaler)."""
    low, high = out_range
    span = moments.max - moments.min
    flat = ~(span > 0)
    _degenerate(flat, "max == min", f"the range's low end ({low:g})")
    scale = np.where(flat, 0.0, (high - low) / np.where(flat, 1.0, span))
    return Affine(np.where(np.isfinite(moments.min), moments.min, 0.0), scale, np.full(len(moments), float(low)))


def zscore(moments: Moments, *, ddof: int = 0, eps: float = 0.0) -> Affine:
    """(x - mean) / sqrt(var + eps) per key (as StandardScaler with eps = 0)."""
    var = moments.var(ddof) + eps
    flat = ~(var > 0)
    _degenerate(flat, "zero variance", "0")
    scale = np.where(flat, 0.0, 1.0 / np.sqrt(np.where(flat, 1.0, var)))
    return Affine(np.where(np.isfinite(moments.mean), moments.mean, 0.0), scale, np.zeros(len(moments)))


def per_key(value, keys: int, name: str) -> np.ndarray:
    """A --gamma/--beta value: one number for every key, or exactly one per key."""
    values = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if values.size == 1:
        return np.full(keys, values[0])
    if values.size != keys:
        raise ValueError(f"{name} has {values.size} values; give one, or one per channel ({keys})")
    return values


def batchnorm(mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> Affine:
    """Batch norm: gamma * (x - mean) / sqrt(var + eps) + beta.

    Training mode passes the batch's mean and biased (population) variance, as PyTorch normalizes
    with; inference mode (--eval) the saved running statistics.
    """
    return Affine(mean, gamma / np.sqrt(var + eps), beta)


@dataclass
class RunningStats:
    """PyTorch's running_mean / running_var: start at 0 and 1, updated once per batch."""

    mean: np.ndarray
    var: np.ndarray
    momentum: float | None  # None: cumulative moving average
    batches: int = 0

    @classmethod
    def start(cls, keys: int, momentum: float | None) -> "RunningStats":
        return cls(np.zeros(keys), np.ones(keys), momentum)

    def update(self, batch: Moments) -> None:
        """Blend in one batch: its mean and its unbiased variance, as PyTorch does."""
        self.batches += 1
        factor = 1.0 / self.batches if self.momentum is None else self.momentum
        self.mean = (1 - factor) * self.mean + factor * batch.mean
        self.var = (1 - factor) * self.var + factor * batch.var(1)


def groupnorm_affine(x: np.ndarray, groups: int, gamma: np.ndarray, beta: np.ndarray, eps: float,
                     ignore_nan: bool = False):
    """Group norm of a (samples, positions, channels) view: statistics per sample and group of
    consecutive channels (as torch.nn.GroupNorm), then gamma/beta per channel. With `ignore_nan`
    the statistics are over each group's finite values.

    Returns (shift, scale, offset) shaped to broadcast against `x`.
    """
    n, positions, channels = x.shape
    per_group = channels // groups
    # Each (sample, group) as one row of an (n * groups, values) array: the per-sample moments,
    # shifted and exact, of every other command.
    rows = x.reshape(n, positions, groups, per_group).transpose(0, 2, 1, 3).reshape(n * groups, -1)
    stats = measure_block(rows, SAMPLE, Layout("NC"), ignore_nan=ignore_nan)
    if stats.moments is None:  # NaN or inf, not ignored: the input's own check reports it after pass 1
        mean = var = np.full((n, 1, groups, 1), np.nan)
    else:
        moments = stats.aggregate()
        mean = moments.mean.reshape(n, 1, groups, 1)
        with np.errstate(invalid="ignore", divide="ignore"):  # a group with no finite value: NaN, passed through
            var = moments.var(0).reshape(n, 1, groups, 1)
    inv_std = 1.0 / np.sqrt(var + eps)
    shift = np.broadcast_to(mean, (n, 1, groups, per_group)).reshape(n, 1, channels)
    scale = (np.broadcast_to(inv_std, (n, 1, groups, per_group)).reshape(n, 1, channels)
             * gamma.reshape(1, 1, channels))
    return shift, scale, beta.reshape(1, 1, channels)


def apply_broadcast(x: np.ndarray, shift, scale, offset, out: np.ndarray,
                    clip: tuple[float, float] | None = None) -> np.ndarray:
    """y = (x - shift) * scale + offset in float64, with arrays already shaped to broadcast against `x`."""
    y = np.subtract(x, shift, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # inf * 0 (--ignore-nan, a flat key): non-finite input is put back after
        y *= scale
    y += offset
    if clip is not None:
        np.clip(y, clip[0], clip[1], out=y)
    out[...] = y
    return out
