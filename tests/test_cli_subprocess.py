"""The installed console script in real processes: one run per command, pipes, and early pipe close."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TIMEOUT = 120


def normcli_command() -> list[str]:
    """The console script beside this interpreter (the venv's), else on PATH, else `python -m normcli`."""
    beside = Path(sys.executable).parent / "normcli"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("normcli")
    return [found] if found else [sys.executable, "-m", "normcli"]


NORMCLI = normcli_command()
ENV = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100"}


def normcli(*args, cwd, check=True, **kwargs):
    result = subprocess.run([*NORMCLI, *map(str, args)], cwd=cwd, capture_output=True, timeout=TIMEOUT, env=ENV,
                            **kwargs)
    assert b"Traceback" not in result.stderr, result.stderr.decode()
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result


@pytest.fixture
def x(tmp_path):
    data = np.random.default_rng(8).normal(3.0, 2.0, (12, 4, 5, 2))
    np.save(tmp_path / "x.npy", data)
    return data


def test_stats(tmp_path, x):
    result = normcli("stats", "x.npy", "--per", "global", "--format", "json", cwd=tmp_path)
    row = json.loads(result.stdout)["rows"][0]
    assert row["mean"] == pytest.approx(x.mean(), rel=1e-12)
    assert row["var"] == pytest.approx(x.var(), rel=1e-12)
    table = normcli("stats", "x.npy", cwd=tmp_path).stdout.decode()
    assert "x.npy" in table and "channel 1" in table
    assert "\x1b[" not in table  # no colour codes in a pipe


def test_normalize(tmp_path, x):
    normcli("normalize", "x.npy", "-o", "n.npy", "-q", cwd=tmp_path)
    np.testing.assert_allclose(np.load(tmp_path / "n.npy"), (x - x.min()) / (x.max() - x.min()), atol=1e-6)


def test_standardize(tmp_path, x):
    result = normcli("standardize", "x.npy", "-o", "z.npy", cwd=tmp_path)
    assert b"after z-score" in result.stdout and result.stderr == b""
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), (x - x.mean()) / x.std(), rtol=1e-5, atol=1e-5)


def test_batchnorm(tmp_path, x):
    normcli("batchnorm", "x.npy", "-o", "bn.npy", "-b", "12", "--eps", "0", "-q", cwd=tmp_path)
    flat = x.reshape(-1, 2)
    np.testing.assert_allclose(np.load(tmp_path / "bn.npy"), (x - flat.mean(0)) / flat.std(0), rtol=1e-5, atol=1e-5)


def test_groupnorm(tmp_path, x):
    normcli("groupnorm", "x.npy", "-o", "gn.npy", "-g", "2", "--eps", "0", "-q", cwd=tmp_path)
    axes = (1, 2)
    expected = (x - x.mean(axis=axes, keepdims=True)) / x.std(axis=axes, keepdims=True)
    np.testing.assert_allclose(np.load(tmp_path / "gn.npy"), expected, rtol=1e-5, atol=1e-5)


def test_sample(tmp_path):
    result = normcli("sample", "s.npy", "-n", "20", "--size", "8", cwd=tmp_path)
    assert b"s.npy" in result.stdout
    assert np.load(tmp_path / "s.npy").shape == (20, 8, 8, 1)


def test_demo(tmp_path):
    out = normcli("demo", cwd=tmp_path).stdout.decode()
    assert "Case 1" in out and "Case 2" in out and "Case 3" in out
    assert os.listdir(tmp_path) == []


def test_merge_stats(tmp_path, x):
    np.save(tmp_path / "a.npy", x[:5])
    np.save(tmp_path / "b.npy", x[5:])
    normcli("stats", "a.npy", "--save", "a.json", "-q", cwd=tmp_path)
    normcli("stats", "b.npy", "--save", "b.json", "-q", cwd=tmp_path)
    normcli("merge-stats", "a.json", "b.json", "-o", "all.json", cwd=tmp_path)
    merged = json.loads((tmp_path / "all.json").read_text())
    np.testing.assert_allclose(merged["mean"], x.reshape(-1, 2).mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged["var"], x.reshape(-1, 2).var(0), rtol=1e-12)


def test_error_exit_code_and_one_line(tmp_path):
    result = normcli("stats", "missing.npy", cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == ["error: no such file or folder (missing.npy)"]
    result = normcli("stats", "missing.npy", "--per", "nope", cwd=tmp_path, check=False)
    assert result.returncode == 2


def test_pipeline_stdout_into_numpy_load(tmp_path, x):
    """normcli standardize x.npy -o - | python -c '...numpy.load(io.BytesIO(sys.stdin.buffer.read()))'

    (numpy.load(sys.stdin.buffer) itself cannot read a pipe: np.load seeks back after peeking at the
    magic bytes, and a pipe cannot seek; numpy's limitation, not normcli's.)
    """
    reader = ("import io, json, sys, numpy; a = numpy.load(io.BytesIO(sys.stdin.buffer.read())); "
              "b = a.astype('float64'); "
              "print(json.dumps([a.shape, str(a.dtype), b.mean(), b.std()]))")
    producer = subprocess.Popen([*NORMCLI, "standardize", "x.npy", "-o", "-"], cwd=tmp_path, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    consumer = subprocess.Popen([sys.executable, "-c", reader], stdin=producer.stdout, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    producer.stdout.close()  # the consumer owns the read end now
    out, err = consumer.communicate(timeout=TIMEOUT)
    report = producer.stderr.read().decode()
    producer.stderr.close()
    assert producer.wait(timeout=TIMEOUT) == 0, report
    assert consumer.returncode == 0, err.decode()
    shape, dtype, mean, std = json.loads(out)
    assert tuple(shape) == x.shape and dtype == "float32"
    z = ((x - x.mean()) / x.std()).astype(np.float32).astype(np.float64)
    assert float(mean) == pytest.approx(z.mean(), abs=1e-7)
    assert float(std) == pytest.approx(z.std(), rel=1e-6)
    assert "before: x.npy" in report and "after z-score: -" in report
    assert os.listdir(tmp_path) == ["x.npy"]


def test_stdin_to_stdout_pipeline(tmp_path, x):
    buffer = io.BytesIO()
    np.save(buffer, x)
    result = normcli("normalize", "-", "-o", "-", "--per", "channel", cwd=tmp_path, input=buffer.getvalue())
    out = np.load(io.BytesIO(result.stdout))
    flat = x.reshape(-1, 2)
    np.testing.assert_allclose(out, (x - flat.min(0)) / (flat.max(0) - flat.min(0)), atol=1e-6)
    assert b"before: -" in result.stderr


def test_python_dash_m_help(tmp_path):
    result = subprocess.run([sys.executable, "-m", "normcli", "--help"], capture_output=True, text=True,
                            timeout=TIMEOUT, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("stats", "normalize", "standardize", "batchnorm", "groupnorm", "sample", "demo", "merge-stats"):
        assert command in result.stdout
    version = subprocess.run([sys.executable, "-m", "normcli", "--version"], capture_output=True, text=True,
                             timeout=TIMEOUT)
    from normcli import __version__

    assert __version__ in version.stdout


@pytest.mark.parametrize("args", [
    ["stats", "big.npy"],  # `normcli stats big.npy | head -1`
    ["stats", "big.npy", "--per", "sample", "--format", "csv"],  # far more than a pipe buffer
    ["stats", "big.npy", "--per", "sample", "--format", "json"],
    ["standardize", "big.npy", "-o", "-"],  # the data stream itself
])
def test_early_pipe_close_ends_quietly(tmp_path, args):
    np.save(tmp_path / "big.npy", np.random.default_rng(0).normal(size=(20000, 8)))
    process = subprocess.Popen([*NORMCLI, *args], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.read(1)  # read the first byte (`head -c 1`), then close the pipe
    process.stdout.close()
    stderr = process.stderr.read().decode()
    process.stderr.close()
    code = process.wait(timeout=TIMEOUT)
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert code in (0, 1), (code, stderr)
    assert sorted(os.listdir(tmp_path)) == ["big.npy"]
