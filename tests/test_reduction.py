"""The reduce seam (reduction.py): a plan of passes whose number is known only as they run, defined
here alone, runs through the one driver on every engine and gives numpy's exact answer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from helpers import dask_cluster
from normcli.engine import open_engine
from normcli.reduction import Pass, reduce_passes
from normcli.sources import open_dataset

BLOCK_BYTES = 256  # 3 samples a block: runs of 3 blocks, and tasks of several runs


# -- a toy plan: the median of integers by bisection, then the total distance from it ---------------
@dataclass(frozen=True)
class Span:
    count: int
    low: int
    high: int

    def merge(self, later: "Span") -> "Span":
        return Span(self.count + later.count, min(self.low, later.low), max(self.high, later.high))


@dataclass(frozen=True)
class Total:
    value: int

    def merge(self, later: "Total") -> "Total":
        return Total(self.value + later.value)


def _values(block) -> np.ndarray:
    return block.read().data.astype(np.int64).ravel()


def span_work(task: None, block) -> Span:
    x = _values(block)
    return Span(x.size, int(x.min()), int(x.max()))


def below_work(pivot: int, block) -> Total:
    return Total(int(np.count_nonzero(_values(block) < pivot)))


def distance_work(median: int, block) -> Total:
    return Total(int(np.abs(_values(block) - median).sum()))


class MedianPlan:
    """Pass 1: the values' count and range. Passes 2..k: halve the range that holds the lower median
    (the k-th smallest value: the largest v with fewer than k+1 values below it), each pass built
    from the one before, until one value is left. The last pass: the total distance from it."""

    def __init__(self):
        self.low = self.high = self.rank = self.pivot = self.median = None

    def next_pass(self, results: tuple) -> Pass | None:
        if not results:
            return Pass("span", span_work, None)
        if self.median is not None:
            return None
        if len(results) == 1:
            span = results[0]
            self.low, self.high, self.rank = span.low, span.high, (span.count - 1) // 2
        elif results[-1].value <= self.rank:
            self.low = self.pivot
        else:
            self.high = self.pivot - 1
        if self.low < self.high:
            self.pivot = (self.low + self.high + 1) // 2
            return Pass("refine", below_work, self.pivot)
        self.median = self.low
        return Pass("distance", distance_work, self.median)


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    pytest.importorskip("distributed", reason="the Dask engine needs the [dask] extra")
    import os

    here = str(Path(__file__).parent)  # the workers import this module's work functions, as pytest did
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), here])))
        with dask_cluster(tmp_path_factory.mktemp("dask-logs")) as (scheduler, _):
            yield scheduler


@pytest.mark.parametrize("engine", ["threads", "processes", "dask"])
def test_a_plan_of_passes_counted_at_run_time_runs_through_one_driver_on_every_engine(
        request, tmp_path, rng, engine):
    x = rng.integers(-5000, 5000, (601, 7, 3)).astype(np.int32)
    np.save(tmp_path / "x.npy", x)
    options = {"scheduler": request.getfixturevalue("address")} if engine == "dask" else {"workers": 2}
    plan = MedianPlan()
    with open_dataset([str(tmp_path / "x.npy")]) as dataset, open_engine(engine, **options) as running:
        blocks = dataset.blocks(BLOCK_BYTES)
        assert len(blocks) > 128
        results = reduce_passes(running, plan, blocks)
    values = np.sort(x.ravel().astype(np.int64))
    median = int(values[(values.size - 1) // 2])
    assert plan.median == median
    assert results[0] == Span(values.size, int(values[0]), int(values[-1]))
    assert len(results) > 3 and results[-1] == Total(int(np.abs(values - median).sum()))
