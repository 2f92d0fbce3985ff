"""The tutorial's data (`normcli sample`, `normcli demo`) and the reproducible order of shuffled batches."""

from __future__ import annotations

import numpy as np

from normcli.errors import UsageMismatch

# `normcli sample` builds its data in memory (float64, with two temporaries of that size).
TUTORIAL_MAX_BYTES = 1 << 30


def check_tutorial_size(n: int, size: int, channels: int) -> None:
    """Refuse, before any allocation, a tutorial dataset beyond TUTORIAL_MAX_BYTES (a usage error)."""
    needed = n * size * size * channels * 8
    if needed > TUTORIAL_MAX_BYTES:
        raise UsageMismatch(f"-n {n} --size {size} --channels {channels} would make {needed / 2**30:,.1f} GiB of "
                            f"float64 in memory; normcli sample makes at most {TUTORIAL_MAX_BYTES >> 30} GiB")


def tutorial_dataset(n: int = 1000, size: int = 32, channels: int = 1, seed: int = 0) -> np.ndarray:
    """The tutorial's data: (n, size, size, channels) float64, a normal signal plus normal noise.

    Signal N(20, 15^2) plus noise N(6, 9^2): mean 26, variance 15^2 + 9^2 = 306.
    """
    rng = np.random.default_rng(seed)
    shape = (n, size, size, channels)
    return rng.normal(20.0, 15.0, shape) + rng.normal(6.0, 9.0, shape)


def shuffled_order(n_samples: int, seed: int) -> np.ndarray:
    """A reproducible random order of the samples (for shuffled batches)."""
    return np.random.default_rng(seed).permutation(n_samples)
