"""Axis layouts (NHWC, NCHW, NHW, NC, N) and the one canonical view the numerics work on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAYOUTS = ("NHWC", "NCHW", "NHW", "NC", "N")
DEFAULT_FOR_NDIM = {4: "NHWC", 3: "NHW", 2: "NC", 1: "N"}


@dataclass(frozen=True)
class Layout:
    """Names the axes of a dataset whose samples lie along axis 0."""

    name: str

    @property
    def ndim(self) -> int:
        return len(self.name)

    @property
    def has_channels(self) -> bool:
        return "C" in self.name

    @property
    def channel_axis(self) -> int | None:
        """The axis of a sample that holds the channels (None: one channel, no axis)."""
        return self.name.index("C") - 1 if self.has_channels else None

    def channels(self, sample_shape) -> int:
        return sample_shape[self.channel_axis] if self.has_channels else 1

    def npc(self, data: np.ndarray) -> np.ndarray:
        """A view of `data` (samples first) shaped (samples, positions, channels).

        Every scope reduces this view: global over all axes, channel over (0, 1),
        sample over (1, 2), pixel over 0.
        """
        n = data.shape[0]
        if self.name == "NCHW":
            return data.reshape(n, data.shape[1], -1).transpose(0, 2, 1)
        if self.name in ("NHWC", "NC"):
            return data.reshape(n, -1, data.shape[-1])
        return data.reshape(n, -1, 1)

    def to_sample(self, per_position: np.ndarray, sample_shape) -> np.ndarray:
        """Per-(position, channel) values shaped (P, C) back into the shape of one sample."""
        sample = np.empty((1, *sample_shape), dtype=per_position.dtype)
        self.npc(sample)[0] = per_position.reshape(self.npc(sample).shape[1:])
        return sample[0]

    def image(self, sample: np.ndarray) -> np.ndarray:
        """One sample as an (H, W, C) image, for layouts that hold images."""
        if self.name == "NHWC":
            return sample
        if self.name == "NCHW":
            return np.moveaxis(sample, 0, -1)
        if self.name == "NHW":
            return sample[..., None]
        raise ValueError(f"layout {self.name} holds no images")


def resolve_layout(name: str | None, ndim: int) -> Layout:
    """The layout the user named, or the default for an array of `ndim` dimensions."""
    if name is None:
        return Layout(DEFAULT_FOR_NDIM[ndim])
    return Layout(name.upper())
