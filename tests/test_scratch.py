"""Per-thread scratch arrays: each thread its own, reused by name, never shared."""

from __future__ import annotations

import threading

import numpy as np

from normcli import scratch


def test_a_thread_gets_its_array_back_by_name_and_other_threads_their_own():
    first = scratch.scratch("test", (4, 3), np.float64)
    again = scratch.scratch("test", 12, np.float32)
    assert first.shape == (4, 3) and again.shape == (12,) and again.dtype == np.float32
    assert np.shares_memory(first, again)  # reused, not allocated afresh
    assert not np.shares_memory(first, scratch.scratch("other", (4, 3), np.float64))
    seen = []
    thread = threading.Thread(target=lambda: seen.append(scratch.scratch("test", (4, 3), np.float64)))
    thread.start()
    thread.join()
    assert not np.shares_memory(first, seen[0])


def test_an_array_past_the_limit_is_not_kept():
    big = scratch.scratch("test big", scratch.MAX_BYTES // 8 + 1, np.float64)
    assert not np.shares_memory(big, scratch.scratch("test big", 8, np.float64))
