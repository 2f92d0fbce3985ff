"""The entry points of run.py called as a library: option objects in, result values out, the
streams those of the Environment handed in."""

from __future__ import annotations

import io

import numpy as np
import pytest

from helpers import save
from normcli.errors import BadOption, UsageMismatch
from normcli.run import (BatchParams, EngineOptions, Environment, Fit, GroupParams, Inputs, Output, Report,
                         StandardizeParams, StatsParams, run_stats, run_transform)


@pytest.fixture
def x(rng):
    return rng.normal(5.0, 3.0, (10, 4, 4, 2))


def test_run_stats_measures_the_inputs(tmp_path, x):
    saved = tmp_path / "s.json"
    result = run_stats(Inputs((save(tmp_path, x),)), StatsParams(per="global", ddof=1, save=str(saved)), Report(bins=0),
                       EngineOptions(), Environment())
    assert result.ddof == 1 and result.stats.moments.count.tolist() == [x.size]
    np.testing.assert_allclose(result.stats.moments.var(1), [x.var(ddof=1)], rtol=1e-12)
    assert saved.exists()


def test_run_transform_reads_stdin_and_writes_stdout_of_the_environment(x):
    data = io.BytesIO()
    np.save(data, x)
    stdout = io.BytesIO()
    result = run_transform(StandardizeParams(), Inputs(("-",)), Output("-", dtype="float64"), Report(quiet=True),
                           EngineOptions(), Environment(stdin=io.BytesIO(data.getvalue()), stdout=stdout))
    assert result.after is None and result.inputs == ["-"]
    y = np.load(io.BytesIO(stdout.getvalue()))
    np.testing.assert_allclose(y, (x - x.mean()) / x.std(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("params, error, option", [
    (BatchParams(4, gamma=(1.0, 2.0, 3.0)), BadOption, "--gamma"),
    (GroupParams(3), BadOption, "--groups"),
    (BatchParams(4, eval_mode=True), UsageMismatch, None),
    (StandardizeParams(fit=Fit(inverse=True)), UsageMismatch, None),
])
def test_usage_errors_name_their_option(tmp_path, x, params, error, option):
    with pytest.raises(error) as info:
        run_transform(params, Inputs((save(tmp_path, x),)), Output(str(tmp_path / "out.npy")), Report(),
                      EngineOptions(), Environment())
    assert getattr(info.value, "option", None) == option
    assert not (tmp_path / "out.npy").exists()
