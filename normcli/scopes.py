"""The scopes of statistics (`--per`): which axes of the (samples, positions, channels) view
each one reduces, and everything that follows from that.

A scope is a frozen value, as a Layout is: its keys, how per-key values broadcast against a
chunk, how its rows are labelled, whether its statistics can be saved and applied to other
data. Adding a scope is adding one value here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the module imports without numpy, so that --help can list the scopes quickly
    import numpy as np

    from normcli.layout import Layout

SAMPLES, POSITIONS, CHANNELS = 0, 1, 2  # the axes of Layout.npc's view


@dataclass(frozen=True)
class Scope:
    """Statistics taken over the `reduced` axes of the (samples, positions, channels) view."""

    name: str
    reduced: tuple[int, ...]
    label: str | None  # the one row's name, or None: rows are numbered by key

    @property
    def per_sample(self) -> bool:
        """Whether the keys are the samples themselves (each chunk then holds whole keys)."""
        return SAMPLES not in self.reduced

    @property
    def reapplicable(self) -> bool:
        """Whether fitted statistics can be saved and applied to other data (not per sample)."""
        return not self.per_sample

    @property
    def single_key(self) -> bool:
        """Whether every value belongs to one key (one row of statistics)."""
        return set(self.reduced) == {SAMPLES, POSITIONS, CHANNELS}

    @property
    def nested(self) -> bool:
        """Whether the keys are positions of a sample: one row whose values are shaped like a sample."""
        return POSITIONS not in self.reduced

    @property
    def one_histogram(self) -> bool:
        """Whether the scope's histogram is of all values (one row), rather than one per key."""
        return self.nested

    def keys_of(self, npc_shape) -> int:
        """How many keys a (samples, positions, channels) array has."""
        return math.prod(npc_shape[a] for a in range(3) if a not in self.reduced)

    def keys(self, layout: Layout, sample_shape, n_samples: int) -> int:
        """How many keys (rows of statistics) a dataset has."""
        channels = layout.channels(sample_shape)
        positions = 1 if POSITIONS in self.reduced else math.prod(sample_shape) // channels
        return self.keys_of((n_samples, positions, channels))

    def values_per_key(self, npc_shape) -> int:
        """How many values each key has in a (samples, positions, channels) array."""
        return math.prod(npc_shape[a] for a in self.reduced)

    def broadcast(self, values: np.ndarray, npc_shape) -> np.ndarray:
        """Per-key values shaped to broadcast against a (samples, positions, channels) array."""
        import numpy as np

        return np.asarray(values).reshape([1 if a in self.reduced else npc_shape[a] for a in range(3)])

    def pieces(self, arrays: tuple, values: tuple):
        """(views of `arrays`, `values` shaped to broadcast against them) that together cover the
        (samples, positions, channels) arrays, which share one shape; `values` are per key.

        Per-channel values against C-contiguous arrays come as rows of about 4096 values against
        the values repeated along a row: numpy's loop over (M, C) rows against a (C,) vector is
        three times slower. Any other scope is one piece.
        """
        import numpy as np

        shape = arrays[0].shape
        channels = shape[CHANNELS]
        if self.reduced != (SAMPLES, POSITIONS) or channels >= 256 or not all(a.flags.c_contiguous for a in arrays):
            yield arrays, tuple(self.broadcast(v, shape) for v in values)
            return
        rows = [a.reshape(-1, channels) for a in arrays]
        per_row = max(1, 4096 // channels)
        whole = len(rows[0]) // per_row * per_row
        if whole:
            yield (tuple(r[:whole].reshape(-1, per_row * channels) for r in rows),
                   tuple(np.tile(np.asarray(v), per_row) for v in values))
        if whole < len(rows[0]):
            yield tuple(r[whole:] for r in rows), tuple(np.asarray(v) for v in values)

    def row_labels(self, keys: int) -> list[str]:
        """The names of a report's rows: the one row's label, else each key's index."""
        if self.label is not None:
            return [self.label]
        return [str(k) for k in range(keys)]


GLOBAL = Scope("global", (SAMPLES, POSITIONS, CHANNELS), "all")  # every value
CHANNEL = Scope("channel", (SAMPLES, POSITIONS), None)  # all samples and positions, per channel
SAMPLE = Scope("sample", (POSITIONS, CHANNELS), None)  # each sample on its own
PIXEL = Scope("pixel", (SAMPLES,), "pixel")  # each (position, channel) across samples

SCOPES: dict[str, Scope] = {s.name: s for s in (GLOBAL, CHANNEL, SAMPLE, PIXEL)}
FITTABLE = tuple(name for name, s in SCOPES.items() if s.reapplicable)


def scope(name: str | Scope) -> Scope:
    """The Scope called `name` (a Scope is returned as it is)."""
    return name if isinstance(name, Scope) else SCOPES[name]
