"""The scopes of statistics (`--per`): which axes of the (samples, positions, channels) view
each one reduces, and everything that follows from that.

A scope is a frozen value, as a Layout is: its keys and the shape they take, how per-key values
broadcast against a chunk, how its rows are labelled, whether its statistics can be saved and
applied to other data. Adding a scope is adding one value to SCOPES: the --per choices, reports
and saved files follow from its axes.
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
    label: str | None = None  # the name of a report's one row (see row_labels); None: the scope's name

    @property
    def per_sample(self) -> bool:
        """Whether the keys follow the samples (each chunk then holds whole keys, in sample order)."""
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
    def by_position(self) -> bool:
        """Whether the keys include the positions of a sample (pixel): they are many, the data needs
        samples of one shape, and a report shows them as one row of values laid out as `key_shape`."""
        return POSITIONS not in self.reduced

    @property
    def one_histogram(self) -> bool:
        """Whether the scope has one histogram of all its values (one row of keys by position) rather
        than one per key."""
        return self.by_position

    def key_shape(self, layout: Layout, sample_shape, n_samples: int) -> tuple[int, ...]:
        """The shape per-key values take: (n_samples,) when keys follow the samples, then the sample's
        own axes that the keys keep (positions: every axis but C; channels: C, or 1 where the
        layout has none). () global, (C,) channel, (N,) sample, the sample's shape pixel."""
        shape = (n_samples,) if self.per_sample else ()
        channel_axis = layout.channel_axis
        if self.by_position:
            return shape + tuple(d for a, d in enumerate(sample_shape)
                                 if a != channel_axis or CHANNELS not in self.reduced)
        return shape + ((layout.channels(sample_shape),) if CHANNELS not in self.reduced else ())

    def key_grid(self, values, layout: Layout, sample_shape) -> np.ndarray:
        """Per-key values (flat, in key order) laid out as `key_shape`: in the sample's own axis
        order, which differs from the key order (positions, then channels) for NCHW."""
        import numpy as np

        kept = self._kept_sample_shape(layout, sample_shape)
        samples = np.asarray(values).reshape(-1, math.prod(kept))  # one row of keys per sample they follow
        grid = np.stack([layout.to_sample(keys, kept) for keys in samples])
        return grid.reshape(self.key_shape(layout, sample_shape, len(samples)))

    def key_order(self, grid, layout: Layout, sample_shape) -> np.ndarray:
        """Values laid out as `key_shape` back into a flat array in key order (key_grid's inverse)."""
        import numpy as np

        grid = np.asarray(grid)
        kept = self._kept_sample_shape(layout, sample_shape)
        samples = grid.reshape(-1, *kept)
        return np.ascontiguousarray(layout.npc(samples)).reshape(-1)

    def _kept_sample_shape(self, layout: Layout, sample_shape) -> tuple[int, ...]:
        """One sample's shape with the axes the keys do not keep as 1."""
        channel_axis = layout.channel_axis
        return tuple(d if (CHANNELS if a == channel_axis else POSITIONS) not in self.reduced else 1
                     for a, d in enumerate(sample_shape))

    def keys_of(self, npc_shape) -> int:
        """How many keys a (samples, positions, channels) array has."""
        return math.prod(npc_shape[a] for a in range(3) if a not in self.reduced)

    def keys(self, layout: Layout, sample_shape, n_samples: int) -> int:
        """How many keys a dataset has."""
        return math.prod(self.key_shape(layout, sample_shape, n_samples))

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
        slower (benchmarks/PROFILE.md). Any other scope is one piece.
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

    def key_views(self, v: np.ndarray):
        """One view of a (samples, positions, channels) array per key, in key order."""
        import numpy as np

        kept = [a for a in range(3) if a not in self.reduced]
        for index in np.ndindex(*(v.shape[a] for a in kept)):
            at = dict(zip(kept, index))
            yield v[tuple(at.get(a, slice(None)) for a in range(3))]

    def row_labels(self, keys: int) -> list[str]:
        """The names of a report's rows: a scope with one key, or keys by position, has one row (its
        label); any other, a row per key, named by its index."""
        if self.single_key or self.by_position:
            return [self.label or self.name]
        return [str(k) for k in range(keys)]


GLOBAL = Scope("global", (SAMPLES, POSITIONS, CHANNELS), "all")  # every value
CHANNEL = Scope("channel", (SAMPLES, POSITIONS))  # all samples and positions, per channel
SAMPLE = Scope("sample", (POSITIONS, CHANNELS))  # each sample on its own
PIXEL = Scope("pixel", (SAMPLES,), "pixel")  # each (position, channel) across samples

SCOPES: dict[str, Scope] = {s.name: s for s in (GLOBAL, CHANNEL, SAMPLE, PIXEL)}


def scope(name: str | Scope) -> Scope:
    """The Scope called `name` (a Scope is returned as it is)."""
    return name if isinstance(name, Scope) else SCOPES[name]
