"""normalize / standardize / batchnorm / groupnorm through Click's CliRunner, against numpy references."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import run_cli as run, write_image
from helpers import ref_batchnorm, ref_groupnorm
from normcli.cli import cli

EPS = 1e-5  # batchnorm / groupnorm default
PER_CHANNEL = (0, 1, 2)  # the axes batch norm reduces, per channel of NHWC data


@pytest.fixture
def x(chdir):
    """(8, 5, 4, 4) float64 NHWC, channels with their own offset and spread; saved as x.npy."""
    rng = np.random.default_rng(21)
    data = rng.normal(size=(8, 5, 4, 4)) * np.array([1.0, 3.0, 0.2, 7.0]) + np.array([5.0, -2.0, 40.0, 0.0])
    np.save("x.npy", data)
    return data


# -- numpy references -------------------------------------------------------------------
def axes(per):
    return {"global": None, "channel": (0, 1, 2), "sample": (1, 2, 3), "pixel": 0}[per]


def ref_normalize(x, per="global", lo=0.0, hi=1.0):
    a = axes(per)
    mn, mx = x.min(axis=a, keepdims=True), x.max(axis=a, keepdims=True)
    return (x - mn) / (mx - mn) * (hi - lo) + lo


def ref_standardize(x, per="global", ddof=0, eps=0.0):
    a = axes(per)
    return (x - x.mean(axis=a, keepdims=True)) / np.sqrt(x.var(axis=a, ddof=ddof, keepdims=True) + eps)


TRANSFORMS = {
    "normalize": ([], lambda x: ref_normalize(x)),
    "normalize-channel-range": (["--per", "channel", "--range", "-1", "1"],
                                lambda x: ref_normalize(x, "channel", -1, 1)),
    "normalize-sample": (["--per", "sample"], lambda x: ref_normalize(x, "sample")),
    "normalize-pixel": (["--per", "pixel"], lambda x: ref_normalize(x, "pixel")),
    "standardize": ([], lambda x: ref_standardize(x)),
    "standardize-channel": (["--per", "channel"], lambda x: ref_standardize(x, "channel")),
    "standardize-sample": (["--per", "sample"], lambda x: ref_standardize(x, "sample")),
    "standardize-pixel-ddof1": (["--per", "pixel", "--ddof", "1"], lambda x: ref_standardize(x, "pixel", 1)),
    "standardize-eps": (["--eps", "0.5"], lambda x: ref_standardize(x, eps=0.5)),
    "batchnorm": (["-b", "3"], lambda x: ref_batchnorm(x, PER_CHANNEL, 3)[0]),
    "batchnorm-gamma-beta": (["--batch-size", "4", "--gamma", "1,2,3,4", "--beta", "0.5"],
                             lambda x: ref_batchnorm(x, PER_CHANNEL, 4, np.array([1.0, 2, 3, 4]), 0.5)[0]),
    "batchnorm-drop-last": (["-b", "3", "--drop-last"], lambda x: ref_batchnorm(x, PER_CHANNEL, 3, drop_last=True)[0]),
    "groupnorm-1": (["--groups", "1"], lambda x: ref_groupnorm(x, 1, channel_axis=-1)),
    "groupnorm-2": (["-g", "2", "--gamma", "2", "--beta", "0,1,2,3"],
                    lambda x: ref_groupnorm(x, 2, 2.0, np.array([0.0, 1, 2, 3]), channel_axis=-1)),
    "groupnorm-4": (["-g", "4", "--eps", "0"], lambda x: ref_groupnorm(x, 4, eps=0.0, channel_axis=-1)),
}


def command_of(name):
    return name.split("-")[0]


def read_output(path: str, kind: str) -> np.ndarray:
    if kind == "npy":
        return np.load(path, allow_pickle=False)
    if kind == "npz":
        with np.load(path, allow_pickle=False) as archive:
            assert archive.files == ["data"]
            return archive["data"]
    import tifffile

    names = sorted(os.listdir(path))
    assert names == [f"{i:06d}.tiff" for i in range(len(names))]
    return np.stack([tifffile.imread(os.path.join(path, n)) for n in names])


@pytest.mark.parametrize("name", TRANSFORMS)
def test_transform_to_npy_matches_numpy(x, name):
    options, reference = TRANSFORMS[name]
    result = run(command_of(name), "x.npy", "-o", "out.npy", *options)
    out = np.load("out.npy")
    assert out.dtype == np.float32
    expected = reference(x)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert "before" in result.stdout and "after" in result.stdout
    assert result.stderr == ""
    assert sorted(os.listdir(".")) == ["out.npy", "x.npy"]


@pytest.mark.parametrize("command, options, reference", [
    ("normalize", [], lambda x: ref_normalize(x)),
    ("standardize", ["--per", "channel"], lambda x: ref_standardize(x, "channel")),
    ("batchnorm", ["-b", "3"], lambda x: ref_batchnorm(x, PER_CHANNEL, 3)[0]),
    ("groupnorm", ["-g", "2"], lambda x: ref_groupnorm(x, 2, channel_axis=-1)),
])
@pytest.mark.parametrize("kind", ["npz", "folder", "stdout"])
def test_transform_output_kinds(x, command, options, reference, kind):
    target = {"npz": "out.npz", "folder": "outdir", "stdout": "-"}[kind]
    result = run(command, "x.npy", "-o", target, *options)
    if kind == "stdout":
        out = np.load(io.BytesIO(result.stdout_bytes), allow_pickle=False)
        assert "before" in result.stderr and "after" in result.stderr  # the report moved to stderr
        assert os.listdir(".") == ["x.npy"]
    else:
        out = read_output(target, kind)
        assert "before" in result.stdout
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.reshape(x.shape), reference(x), rtol=1e-5, atol=1e-5)


def test_npz_output_keeps_the_input_key_and_dtype_option(x):
    np.savez("in.npz", images=x)
    run("standardize", "in.npz", "-o", "out.npz", "--dtype", "float64", "-q")
    with np.load("out.npz") as archive:
        assert archive.files == ["images"]
        out = archive["images"]
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, ref_standardize(x), rtol=1e-12, atol=1e-12)


def test_stdin_to_stdout(x):
    buffer = io.BytesIO()
    np.save(buffer, x)
    result = CliRunner().invoke(cli, ["normalize", "-", "-o", "-", "--format", "json"], input=buffer.getvalue())
    assert result.exit_code == 0, result.stderr
    out = np.load(io.BytesIO(result.stdout_bytes))
    np.testing.assert_allclose(out, ref_normalize(x), rtol=1e-6, atol=1e-6)
    doc = json.loads(result.stderr)
    assert doc["output"] == "-"


class Terminal(io.BytesIO):
    def isatty(self):
        return True


def test_streams_handed_in_are_the_ones_read_and_written(x):
    """The command reads `-` from the Environment's stdin and writes `-o -` to its stdout, not sys's."""
    from normcli.run import Environment

    buffer = io.BytesIO()
    np.save(buffer, x)
    stdout = io.BytesIO()
    env = Environment(stdin=io.BytesIO(buffer.getvalue()), stdout=stdout)
    result = CliRunner().invoke(cli, ["standardize", "-", "-o", "-", "--quiet"], obj=env, input=b"")
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes == b""
    np.testing.assert_allclose(np.load(io.BytesIO(stdout.getvalue())), ref_standardize(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("args", [["standardize", "x.npy", "-o", "-"], ["sample", "-", "-n", "2"]])
def test_binary_output_is_refused_when_the_handed_in_stdout_is_a_terminal(x, args):
    from normcli.run import Environment

    stdout = Terminal()
    result = CliRunner().invoke(cli, args, obj=Environment(stdout=stdout, stdout_isatty=True))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: refusing to write .npy data to a terminal")
    assert stdout.getvalue() == b""


def test_stdin_a_terminal_handed_in_is_refused(x):
    from normcli.run import Environment

    result = CliRunner().invoke(cli, ["stats", "-"], obj=Environment(stdin=Terminal()))
    assert result.exit_code == 1
    assert result.stderr == "error: '-' reads a .npy stream from stdin, but stdin is a terminal; pipe an array in (-)\n"


# -- reports ------------------------------------------------------------------------------
@pytest.mark.parametrize("command, options", [
    ("normalize", ["--per", "channel"]), ("standardize", []), ("groupnorm", ["-g", "2"]),
    ("batchnorm", ["-b", "4"]),
])
def test_json_report_before_after_output(x, command, options):
    result = run(command, "x.npy", "-o", "out.npy", "--format", "json", *options)
    doc = json.loads(result.stdout)
    assert {"before", "after", "output"} <= set(doc)
    if command != "batchnorm":
        assert set(doc) == {"before", "after", "output"}
    assert doc["output"] == "out.npy"
    out = np.load("out.npy").astype(np.float64)
    scope = doc["before"]["per"]
    assert doc["after"]["per"] == scope
    for report, data in ((doc["before"], x), (doc["after"], out)):
        assert report["samples"] == len(x)
        assert report["sample_shape"] == list(x.shape[1:])
        flat = data.reshape(-1) if scope == "global" else data.reshape(-1, x.shape[-1]).T
        for row, values in zip(report["rows"], np.atleast_2d(flat)):
            assert row["count"] == values.size
            np.testing.assert_allclose(row["mean"], values.mean(), rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(row["var"], values.var(), rtol=1e-9, atol=1e-9)
            assert row["min"] == values.min() and row["max"] == values.max()
            assert sum(row["histogram"]["counts"]) == values.size
    assert doc["before"]["dtype"] == "float64" and doc["after"]["dtype"] == "float32"


@pytest.mark.parametrize("command", ["standardize", "normalize"])
@pytest.mark.parametrize("per", ["global", "channel", "sample"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_report_histograms_are_numpys_of_the_input_and_of_the_stored_output(chdir, command, per, dtype):
    """The write pass counts the output's histograms in one pass with the input's (one affine map
    per key): both are np.histogram's, of the input and of the stored values over the report's
    edges, on values that sit on every edge of the input's bins (and so next to the output's)."""
    rng = np.random.default_rng(3)
    x = np.clip(np.round(rng.normal(0, 3, (4, 40, 40, 3)) * 64) / 64, -8, 8).astype(np.float32)
    x[:, 0, 0], x[:, 0, 1] = -8, 8  # every key's range is [-8, 8]: with 32 bins 1/32 of the values sit on edges
    np.save("x.npy", x)
    doc = json.loads(run(command, "x.npy", "-o", "out.npy", "--per", per, "--dtype", dtype, "--bins", "32",
                         "--format", "json").stdout)
    out = np.load("out.npy")
    for report, data in ((doc["before"], x), (doc["after"], out)):
        rows = {"global": data.reshape(1, -1), "channel": data.reshape(-1, 3).T,
                "sample": data.reshape(len(x), -1)}[per]
        for row, values in zip(report["rows"], rows, strict=True):
            edges = np.array(row["histogram"]["edges"])
            want = np.histogram(np.clip(values, edges[0], edges[-1]), len(edges) - 1, range=(edges[0], edges[-1]))[0]
            assert row["histogram"]["counts"] == want.tolist()


def test_batchnorm_json_has_per_batch_statistics(x):
    doc = json.loads(run("batchnorm", "x.npy", "-o", "out.npy", "-b", "3", "--format", "json").stdout)
    out = np.load("out.npy").astype(np.float64)
    assert [b["size"] for b in doc["batches"]] == [3, 3, 2]
    for b, start in zip(doc["batches"], range(0, len(x), 3)):
        np.testing.assert_allclose(b["mean_before"], x[start:start + 3].mean(), rtol=1e-12)
        np.testing.assert_allclose(b["var_before"], x[start:start + 3].var(), rtol=1e-12)
        np.testing.assert_allclose(b["mean_after"], out[start:start + 3].mean(), atol=1e-9)
        np.testing.assert_allclose(b["var_after"], out[start:start + 3].var(), rtol=1e-9)


def test_json_report_goes_to_stderr_with_stdout_output(x):
    result = run("standardize", "x.npy", "-o", "-", "--format", "json")
    doc = json.loads(result.stderr)
    assert doc["output"] == "-"
    np.testing.assert_allclose(np.load(io.BytesIO(result.stdout_bytes)), ref_standardize(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("command, options", [
    ("normalize", []), ("standardize", []), ("batchnorm", ["-b", "2"]), ("groupnorm", ["-g", "1"])])
def test_quiet_prints_nothing(x, command, options):
    result = run(command, "x.npy", "-o", "out.npy", "--quiet", *options)
    assert result.stdout == "" and result.stderr == ""
    assert np.load("out.npy").shape == x.shape
    result = run(command, "x.npy", "-o", "-", "-q", *options)
    assert result.stderr == ""
    assert np.load(io.BytesIO(result.stdout_bytes)).shape == x.shape


def test_table_report_shows_before_and_after(x):
    out = run("standardize", "x.npy", "-o", "z.npy").stdout
    assert out.index("before: x.npy") < out.index("after z-score: z.npy")
    assert f"{x.mean():.6g}" in out and f"{x.var():.6g}" in out


# -- fit on train, apply to test ------------------------------------------------------------
@pytest.mark.parametrize("command, per, reference", [
    ("standardize", "channel", lambda train, test: (test - train.reshape(-1, 4).mean(0)) / train.reshape(-1, 4).std(0)),
    ("standardize", "pixel", lambda train, test: (test - train.mean(0)) / train.std(0)),
    ("standardize", "global", lambda train, test: (test - train.mean()) / train.std()),
    ("normalize", "channel", lambda train, test: (test - train.reshape(-1, 4).min(0))
     / (train.reshape(-1, 4).max(0) - train.reshape(-1, 4).min(0))),
    ("normalize", "pixel", lambda train, test: (test - train.min(0)) / (train.max(0) - train.min(0))),
])
def test_save_stats_and_stats_from_round_trip(x, command, per, reference):
    train, test = x[:5], x[5:] * 1.5 + 2
    np.save("train.npy", train)
    np.save("test.npy", test)
    run(command, "train.npy", "-o", "train_t.npy", "--per", per, "--save-stats", "train.json", "-q")
    saved = json.load(open("train.json"))
    assert saved["per"] == per and saved["layout"] == "NHWC" and saved["inputs"] == ["train.npy"]
    expected_train = reference(train, train)
    np.testing.assert_allclose(np.load("train_t.npy"), expected_train, rtol=1e-5, atol=1e-5)

    run(command, "test.npy", "-o", "test_t.npy", "--stats-from", "train.json", "-q")
    np.testing.assert_allclose(np.load("test_t.npy"), reference(train, test), rtol=1e-5, atol=1e-5)
    # Naming the file's own scope is no contradiction.
    run(command, "test.npy", "-o", "test_t2.npy", "--stats-from", "train.json", "--per", per, "-q")

    run(command, "test_t.npy", "-o", "back.npy", "--stats-from", "train.json", "--inverse", "-q")
    np.testing.assert_allclose(np.load("back.npy"), test, rtol=1e-5, atol=1e-4)


def test_normalize_stats_from_with_range(x):
    np.save("train.npy", x[:4])
    np.save("test.npy", x[4:])
    run("normalize", "train.npy", "-o", "t.npy", "--save-stats", "s.json", "-q")
    run("normalize", "test.npy", "-o", "u.npy", "--stats-from", "s.json", "--range", "-1", "1", "-q")
    mn, mx = x[:4].min(), x[:4].max()
    np.testing.assert_allclose(np.load("u.npy"), (x[4:] - mn) / (mx - mn) * 2 - 1, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("command", ["normalize", "standardize"])
@pytest.mark.parametrize("option", [["--per", "global"], ["--per", "pixel"], ["--layout", "NCHW"]])
def test_stats_from_with_contradicting_option_is_usage_error(x, command, option):
    run(command, "x.npy", "-o", "t.npy", "--per", "channel", "--save-stats", "s.json", "-q")
    result = run(command, "x.npy", "-o", "u.npy", "--stats-from", "s.json", *option, ok=False)
    assert result.exit_code == 2
    assert option[0] in result.stderr and "s.json" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists("u.npy")


def test_stats_from_does_not_fit_the_data(x):
    run("standardize", "x.npy", "-o", "t.npy", "--per", "channel", "--save-stats", "s.json", "-q")
    np.save("three.npy", x[..., :3])
    result = run("standardize", "three.npy", "-o", "u.npy", "--stats-from", "s.json", ok=False)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "s.json" in result.stderr
    assert not os.path.exists("u.npy")


# -- batchnorm running statistics ----------------------------------------------------------
@pytest.mark.parametrize("momentum", [None, "0.3"])
def test_batchnorm_save_stats_has_running_statistics(x, momentum):
    options = ["--momentum", momentum] if momentum else []
    m = float(momentum) if momentum else 0.1
    run("batchnorm", "x.npy", "-o", "bn.npy", "-b", "3", "--save-stats", "bn.json", "-q", *options)
    saved = json.load(open("bn.json"))
    assert {"running_mean", "running_var", "momentum", "batches"} <= set(saved)
    out, running_mean, running_var, batches = ref_batchnorm(x, PER_CHANNEL, 3, momentum=m)
    np.testing.assert_allclose(np.load("bn.npy"), out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(saved["running_mean"], running_mean, rtol=1e-12)
    np.testing.assert_allclose(saved["running_var"], running_var, rtol=1e-12)
    assert saved["momentum"] == m
    assert saved["batches"] == batches == 3
    # The whole input's statistics under the usual keys.
    assert saved["per"] == "channel" and saved["count"] == [x[..., 0].size] * 4
    np.testing.assert_allclose(saved["mean"], x.reshape(-1, 4).mean(0), rtol=1e-12)
    np.testing.assert_allclose(saved["var"], x.reshape(-1, 4).var(0), rtol=1e-12)


def test_batchnorm_matches_torch(x):
    torch = pytest.importorskip("torch")
    run("batchnorm", "x.npy", "-o", "bn.npy", "-b", "3", "--save-stats", "bn.json", "-q", "--gamma", "1,2,3,4",
        "--beta", "0,1,0,1")
    layer = torch.nn.BatchNorm2d(4, eps=EPS, momentum=0.1, dtype=torch.float64).train()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 2, 3, 4]))
        layer.bias.copy_(torch.tensor([0.0, 1, 0, 1]))
        outs = [layer(torch.from_numpy(x[i:i + 3]).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
                for i in range(0, len(x), 3)]
    saved = json.load(open("bn.json"))
    np.testing.assert_allclose(np.load("bn.npy"), np.concatenate(outs), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(saved["running_mean"], layer.running_mean.numpy(), rtol=1e-10)
    np.testing.assert_allclose(saved["running_var"], layer.running_var.numpy(), rtol=1e-10)


def test_batchnorm_eval_uses_running_statistics(x):
    run("batchnorm", "x.npy", "-o", "bn.npy", "-b", "4", "--save-stats", "bn.json", "-q")
    saved = json.load(open("bn.json"))
    test = x[::-1] * 2 + 1
    np.save("test.npy", test)
    run("batchnorm", "test.npy", "-o", "eval.npy", "-b", "4", "--eval", "--stats-from", "bn.json", "-q",
        "--gamma", "2", "--beta", "-1")
    _, running_mean, running_var, _ = ref_batchnorm(x, PER_CHANNEL, 4)
    np.testing.assert_allclose(saved["running_mean"], running_mean, rtol=1e-12)
    expected = (test - running_mean) / np.sqrt(running_var + EPS) * 2 - 1
    np.testing.assert_allclose(np.load("eval.npy"), expected, rtol=1e-5, atol=1e-5)


def test_batchnorm_eval_needs_running_statistics(x):
    run("standardize", "x.npy", "-o", "z.npy", "--per", "channel", "--save-stats", "s.json", "-q")
    result = run("batchnorm", "x.npy", "-o", "e.npy", "-b", "2", "--eval", "--stats-from", "s.json", ok=False)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "s.json" in result.stderr
    assert not os.path.exists("e.npy")


def test_batchnorm_eval_without_stats_from_is_usage_error(x):
    result = run("batchnorm", "x.npy", "-o", "e.npy", "-b", "2", "--eval", ok=False)
    assert result.exit_code == 2
    assert not os.path.exists("e.npy")


def test_batchnorm_single_batch_equals_standardize(x):
    run("batchnorm", "x.npy", "-o", "bn.npy", "-b", str(len(x)), "--per", "global", "--eps", "0", "-q")
    run("standardize", "x.npy", "-o", "z.npy", "-q")
    np.testing.assert_allclose(np.load("bn.npy"), np.load("z.npy"), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.load("z.npy"), ref_standardize(x), rtol=1e-5, atol=1e-5)


def test_groupnorm_matches_torch(x):
    torch = pytest.importorskip("torch")
    run("groupnorm", "x.npy", "-o", "gn.npy", "-g", "2", "-q")
    expected = torch.nn.functional.group_norm(torch.from_numpy(x).permute(0, 3, 1, 2), 2, eps=EPS)
    np.testing.assert_allclose(np.load("gn.npy"), expected.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)


# -- NaN ---------------------------------------------------------------------------------------
def test_ignore_nan_leaves_nan_out_and_passes_it_through(x):
    data = x.copy()
    data[1, 2, 3, 0] = np.nan
    data[4, 0, 0, 2] = np.inf
    np.save("nan.npy", data)
    doc = json.loads(run("stats", "nan.npy", "--per", "global", "--ignore-nan", "--format", "json").stdout)
    finite = data[np.isfinite(data)]
    assert doc["rows"][0]["count"] == finite.size
    np.testing.assert_allclose(doc["rows"][0]["mean"], finite.mean(), rtol=1e-12)
    np.testing.assert_allclose(doc["rows"][0]["var"], finite.var(), rtol=1e-12)
    run("standardize", "nan.npy", "-o", "z.npy", "--ignore-nan", "-q")
    z = np.load("z.npy")
    assert np.isnan(z[1, 2, 3, 0]) and np.isposinf(z[4, 0, 0, 2])
    mask = np.isfinite(data)
    np.testing.assert_allclose(z[mask], (data[mask] - finite.mean()) / finite.std(), rtol=1e-5, atol=1e-5)


# -- image folders -------------------------------------------------------------------------
def test_normalize_png_folder_to_png_folder_keeps_names(chdir):
    rng = np.random.default_rng(9)
    images = {"a/0.png": rng.integers(10, 200, (6, 5, 3), dtype=np.uint8),
              "b/1.png": rng.integers(10, 200, (4, 7, 3), dtype=np.uint8)}
    for name, image in images.items():
        write_image(chdir / "in" / name, image)
    run("normalize", "in", "-o", "out", "--per", "channel", "-q")
    from PIL import Image

    pooled = np.concatenate([im.reshape(-1, 3) for im in images.values()]).astype(np.float64)
    mn, mx = pooled.min(0), pooled.max(0)
    for name, image in images.items():
        written = np.asarray(Image.open(chdir / "out" / name))
        assert written.dtype == np.uint8 and written.shape == image.shape
        expected = np.rint((image - mn) / (mx - mn) * 255)
        np.testing.assert_array_equal(written, expected)


def test_standardize_png_folder_with_clip_and_to_tiff(chdir):
    import tifffile

    image = np.random.default_rng(2).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    write_image(chdir / "in" / "0.png", image)
    result = run("standardize", "in", "-o", "clipped", "--clip")
    assert "clipped" in result.stderr  # the warning says how many values were clipped
    run("standardize", "in", "-o", "floats", "--ext", "tiff", "-q")
    z = tifffile.imread(chdir / "floats" / "0.tiff")
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, ref_standardize(image.astype(np.float64)), rtol=1e-5, atol=1e-5)


def test_standardize_ddof_1_reports_the_unbiased_variance(x):
    result = run("standardize", "x.npy", "-o", "z.npy", "--ddof", "1", "--format", "json", "--bins", "0")
    before = json.loads(result.stdout)["before"]["rows"][0]
    np.testing.assert_allclose(before["var"], x.var(ddof=1), rtol=1e-12)
    np.testing.assert_allclose(np.load("z.npy").var(ddof=1), 1.0, rtol=1e-5)


def test_groupnorm_ignore_nan_normalizes_each_group_by_its_finite_values(x):
    x = x.copy()
    x[0, 1, 2, 0] = np.nan
    np.save("nan.npy", x)
    run("groupnorm", "nan.npy", "-o", "g.npy", "-g", "1", "--ignore-nan", "--dtype", "float64", "-q")
    out = np.load("g.npy")
    assert np.isnan(out[0, 1, 2, 0]) and np.isfinite(np.delete(out.reshape(-1), 1 * 4 * 4 + 2 * 4)).all()
    finite = x[0][np.isfinite(x[0])]
    expected = (finite - finite.mean()) / np.sqrt(finite.var() + EPS)
    np.testing.assert_allclose(out[0][np.isfinite(x[0])], expected, rtol=1e-10)


def test_nan_under_shuffle_names_the_sample_in_the_input(x):
    x = x.copy()
    x[3, 0, 0, 0] = np.nan
    np.save("nan.npy", x)
    result = run("batchnorm", "nan.npy", "-o", "b.npy", "-b", "2", "--shuffle", "--seed", "5", ok=False)
    assert result.exit_code == 1 and "first in sample 3;" in result.stderr


def test_drop_last_saves_the_whole_inputs_statistics(x):
    result = run("batchnorm", "x.npy", "-o", "b.npy", "-b", "3", "--drop-last", "--save-stats", "s.json",
                 "--format", "json")
    saved = json.load(open("s.json"))
    assert saved["count"] == [x.shape[0] * x.shape[1] * x.shape[2]] * x.shape[3]
    np.testing.assert_allclose(saved["mean"], x.mean(axis=(0, 1, 2)), rtol=1e-12)
    doc = json.loads(result.stdout)
    assert [sum(r["histogram"]["counts"]) for r in doc["before"]["rows"]] == saved["count"]
    assert np.load("b.npy").shape[0] == x.shape[0] // 3 * 3


def test_a_float32_inverse_far_from_zero_warns_once_and_float64_carries_it(tmp_path, rng):
    x = 1e9 + rng.normal(0.0, 1.0, (50, 4))
    np.save(tmp_path / "far.npy", x)
    run("standardize", tmp_path / "far.npy", "-o", tmp_path / "z.npy", "--dtype", "float64",
            "--save-stats", tmp_path / "s.json", "-q")
    coarse = run("standardize", tmp_path / "z.npy", "-o", tmp_path / "back32.npy", "--inverse",
                     "--stats-from", tmp_path / "s.json", "-q")
    warnings = [line for line in coarse.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "--dtype float64" in warnings[0]
    fine = run("standardize", tmp_path / "z.npy", "-o", tmp_path / "back64.npy", "--inverse",
                   "--stats-from", tmp_path / "s.json", "-q", "--dtype", "float64")
    assert "warning" not in fine.stderr
    assert np.abs(np.load(tmp_path / "back64.npy") - x).max() <= 4 * np.spacing(1e9)


def test_an_output_beyond_float32_is_refused_before_writing(tmp_path, rng):
    np.save(tmp_path / "d.npy", rng.normal(0.0, 1.0, (8, 4)))
    result = run("batchnorm", tmp_path / "d.npy", "-o", tmp_path / "bn.npy", "-b", "3", "--gamma", "3e38", ok=False)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the output reaches") and "--dtype float64" in result.stderr
    assert not (tmp_path / "bn.npy").exists()
    run("batchnorm", tmp_path / "d.npy", "-o", tmp_path / "bn64.npy", "-b", "3", "--gamma", "3e38", "--dtype",
        "float64", "-q")
    assert np.isfinite(np.load(tmp_path / "bn64.npy")).all()


def test_saved_statistics_applied_without_a_report_read_the_input_once(tmp_path, rng, monkeypatch):
    """standardize --stats-from -q: one pass (blocks read once), the same output as two, and NaN
    still refused with the sample that holds it, nothing written."""
    from normcli.sources import Block

    x = rng.normal(3.0, 2.0, (40, 5, 4))
    np.save(tmp_path / "x.npy", x)
    run("standardize", tmp_path / "x.npy", "-o", tmp_path / "two.npy", "--save-stats", tmp_path / "s.json", "-q")
    reads = []
    original = Block.read
    monkeypatch.setattr(Block, "read", lambda self: reads.append(self.start) or original(self))
    run("standardize", tmp_path / "x.npy", "-o", tmp_path / "one.npy", "--stats-from", tmp_path / "s.json", "-q")
    assert sorted(reads) == sorted(set(reads))  # every block once
    np.testing.assert_array_equal(np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy"))
    x[7, 1, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    result = run("standardize", tmp_path / "nan.npy", "-o", tmp_path / "nan_z.npy", "--stats-from",
                 tmp_path / "s.json", "-q", ok=False)
    assert result.exit_code == 1
    assert result.stderr == "error: the input holds 1 NaN value, first in sample 7; use --ignore-nan to leave them " \
                            f"out ({tmp_path / 'nan.npy'})\n"
    assert not (tmp_path / "nan_z.npy").exists()


def test_the_after_report_of_an_8bit_output_shows_the_values_it_encodes(tmp_path, image_tree):
    """normalize to PNG: the output encodes [0, 1]; its reported max is 1, not 0.999... cut to an int."""
    result = run("normalize", image_tree, "-o", tmp_path / "out", "--format", "json", "--bins", "0")
    after = json.loads(result.stdout)["after"]["rows"][0]
    assert after["min"] == 0.0 and abs(after["max"] - 1.0) <= 1e-12
    before = json.loads(result.stdout)["before"]["rows"][0]
    assert isinstance(before["min"], int) and isinstance(before["max"], int)  # uint8 input: integer extremes


# -- 8-bit inputs to integer outputs by table lookup ----------------------------------------------
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("per", ["global", "channel"])
@pytest.mark.parametrize("case", ["fit", "wider", "narrower"])
def test_an_8bit_input_looked_up_in_a_table_stores_the_mapped_and_encoded_integers(chdir, rng, layout, per, case):
    """A quiet normalize of uint8 data into uint8 looks every value up in a table of the map
    (encoding.ValueTable): the same bytes as mapping and encoding each value, with --clip too, and the
    same refusal without it."""
    from unittest import mock

    from normcli import encoding

    shape = (7, 3, 5, 4) if layout == "NCHW" else (7, 5, 4, 3)
    x = rng.integers(40, 200, shape).astype(np.uint8)
    np.save("x.npy", x)
    # the statistics applied: x's own, a wider range (values inside), a narrower one (values clipped)
    fit = {"fit": x, "wider": np.array([0, 255], np.uint8).reshape(2, 1, 1, 1) * np.ones(shape[1:], np.uint8),
           "narrower": x.clip(80, 150)}[case]
    np.save("fit.npy", fit)
    run("stats", "fit.npy", "--layout", layout, "--per", per, "--save-stats", "fit.json", "-q")
    args = ["normalize", "x.npy", "--layout", layout, "--stats-from", "fit.json", "--dtype", "uint8", "-q", "--force"]
    for clip in ([], ["--clip"]):
        results = {}
        for name, table in (("table", encoding.value_table), ("arithmetic", lambda *a: None)):
            with mock.patch.object(encoding, "value_table", table):
                result = run(*args, *clip, "-o", f"{name}.npy", ok=False)
            results[name] = (result.exit_code, result.stderr.replace(name, "OUT"), os.path.exists(f"{name}.npy"))
            if result.exit_code == 0:
                results[name] += (np.load(f"{name}.npy").tobytes(),)
                os.unlink(f"{name}.npy")
        assert results["table"] == results["arithmetic"]
        assert results["table"][0] == (1 if case == "narrower" and not clip else 0)


@pytest.mark.parametrize("per", ["global", "channel"])
def test_a_value_table_counts_the_values_it_clips_as_encoding_them_does(rng, per):
    """The table's lookup stores what encoding the mapped values stores, and counts as many clipped
    values (what the run counts as clipped)."""
    from functools import partial

    from normcli import encoding, sinks
    from normcli.scopes import SCOPES
    from normcli.transforms import Affine

    scope = SCOPES[per]
    keys = 1 if per == "global" else 3
    affine = Affine(rng.uniform(50, 150, keys), 1 / rng.uniform(50, 100, keys), np.zeros(keys))
    writer = sinks.Encoder(np.dtype(np.uint8), True, "out")
    table = encoding.value_table(partial(affine.apply, scope=scope), keys, np.dtype(np.float64), writer.dtype,
                                 writer.scale)
    v = rng.integers(0, 256, (4, 30, 3)).astype(np.uint8)
    mapped = np.empty(v.shape)
    affine.apply(v, mapped, scope)
    expected, expected_clipped = writer.encode(mapped)
    out = np.empty(v.shape, np.uint8)
    assert table.encode(v, out) == expected_clipped > 0
    np.testing.assert_array_equal(out, expected)
