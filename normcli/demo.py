"""The batch-normalization tutorial, replayed with normcli's own passes on real files."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from normcli.layout import Layout
from normcli.options import Output
from normcli.passes import Measuring, transform
from normcli.plans import Batching, BatchPlan, ScalePlan
from normcli.sinks import Outputs, write_array
from normcli.sources import open_dataset
from normcli.tutorial import tutorial_dataset
from normcli.transforms import minmax, zscore

BATCH = 10


@dataclass
class DemoStep:
    title: str
    note: str = ""
    stats: list = field(default_factory=list)  # Stats, their inputs named for people


def _named(stats, name: str):
    """The statistics with their input named for the reader instead of a temporary path."""
    return replace(stats, inputs=[name])


def _transform(dataset, plan, path: Path, bins: int, report: bool = True):
    with Outputs() as outputs:
        return transform(dataset, plan, Output(str(path)), outputs, Measuring(bins, report=report))


def _write(path: Path, data: np.ndarray) -> None:
    with Outputs() as outputs:
        write_array(str(path), data, outputs, force=False, layout=Layout("NHWC"))


def run_demo(*, seed: int = 0, bins: int = 30) -> Iterator[DemoStep]:
    """Yield each step of the tutorial as it is computed."""
    with tempfile.TemporaryDirectory(prefix="normcli-demo-") as tmp:
        folder = Path(tmp)
        data = tutorial_dataset(seed=seed)
        _write(folder / "data.npy", data)
        _write(folder / "first10.npy", data[:BATCH])
        with open_dataset([str(folder / "data.npy")]) as dataset:
            case1 = _transform(dataset, ScalePlan("global", lambda m: minmax(m)), folder / "minmax.npy", bins)
            yield DemoStep(
                "Case 1: min-max normalization of the whole set to [0, 1]",
                "The data: 1000 grayscale 32×32 images shaped (N, H, W, C), a normal signal plus normal "
                "noise (mean ≈ 26, variance ≈ 306).\nx' = (x - min) / (max - min): the histogram keeps its "
                "shape, its axis moves to [0, 1].",
                [_named(case1.before, "data.npy"), _named(case1.after, "normalized")])
            case2 = _transform(dataset, ScalePlan("global", lambda m: zscore(m)), folder / "z.npy", bins)
            yield DemoStep(
                "Case 2: standardization of the whole set",
                "x' = (x - mean) / std: mean 0, variance 1.",
                [_named(case2.before, "data.npy"), _named(case2.after, "standardized")])
        with open_dataset([str(folder / "first10.npy")]) as first10:
            gamma, beta = np.ones(1), np.zeros(1)
            plan = BatchPlan(first10, "channel", Batching(BATCH), gamma, beta, 1e-5)
            case3 = _transform(first10, plan, folder / "bn.npy", bins)
            _transform(first10, ScalePlan("global", lambda m: zscore(m)), folder / "z10.npy", 0, report=False)
        difference = np.abs(np.load(folder / "bn.npy").astype(np.float64)
                            - np.load(folder / "z10.npy").astype(np.float64)).max()
        yield DemoStep(
            "Case 3: batch normalization of the first 10 images (γ = 1, β = 0, ε = 1e-5)",
            f"y = γ (x - μ_B) / sqrt(σ²_B + ε) + β over the batch; max |batch norm - standardize| = "
            f"{difference:.2e} (float32 output, ε = 1e-5 vs 0)",
            [_named(case3.before, "the first 10 images"), _named(case3.after, "batch-normalized")])
