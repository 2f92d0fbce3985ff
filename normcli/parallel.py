"""Order-keeping parallel map: the one place normcli spreads work over the cores."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# numpy's kernels, file reads and image decoders release the GIL, so threads use every core.
WORKERS = max(1, min(os.cpu_count() or 1, 8))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int = WORKERS,
                ahead: int | None = None) -> Iterator[R]:
    """Like map(fn, items), run on `workers` threads, results in input order.

    At most `ahead` items are in flight, so memory stays bounded however long `items` is.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    ahead = ahead or 2 * workers
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
