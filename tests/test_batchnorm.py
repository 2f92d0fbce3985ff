"""Training-mode batch norm through passes.transform(BatchPlan): outputs and running statistics
against torch.nn.BatchNorm2d / BatchNorm1d and a float64 numpy reference that needs no torch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from normcli.errors import UsageMismatch
from normcli.plans import Batching, BatchPlan, ScalePlan
from normcli.sources import open_dataset
from normcli.transforms import zscore

from helpers import fresh_path, ref_batchnorm, save, transform

# Axes each scope reduces in a batch, in the array's own axis order.
AXES = {
    "NHWC": {"global": (0, 1, 2, 3), "channel": (0, 1, 2), "pixel": (0,)},
    "NCHW": {"global": (0, 1, 2, 3), "channel": (0, 2, 3), "pixel": (0,)},
    "NHW": {"global": (0, 1, 2), "channel": (0, 1, 2), "pixel": (0,)},
    "NC": {"global": (0, 1), "channel": (0,), "pixel": (0,)},
}


def run_bn(folder, x, scope, batch_size, gamma=None, beta=None, eps=1e-5, *, layout=None, dtype=None,
           momentum=0.1, drop_last=False, order=None, ignore_nan=False, inputs=None):
    """Batch-normalize `x`; returns (output, plan). gamma/beta default to 1/0 per key."""
    out = fresh_path(folder, "bn", ".npy")
    with open_dataset(inputs or [save(folder, x)], layout=layout) as dataset:
        from normcli.scopes import SCOPES

        keys = SCOPES[scope].keys(dataset.layout, dataset.sample_shape, dataset.n_samples)
        gamma = np.ones(keys) if gamma is None else np.asarray(gamma, np.float64)
        beta = np.zeros(keys) if beta is None else np.asarray(beta, np.float64)
        plan = BatchPlan(dataset, scope, Batching(batch_size, momentum, drop_last, order), gamma, beta, eps,
                         ignore_nan=ignore_nan)
        transform(dataset, plan, str(out), dtype=dtype, bins=0, ignore_nan=ignore_nan)
    return np.load(out), plan


def torch_batchnorm(torch, module, batches_nchw):
    """Run `module` in training mode over the batches (float64 numpy arrays shaped for it)."""
    module.train()
    with torch.no_grad():
        return [module(torch.from_numpy(b)).numpy() for b in batches_nchw]


def make_torch_bn(torch, cls, features, gamma, beta, eps, momentum, dtype):
    module = cls(features, eps=eps, momentum=momentum, dtype=dtype)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(np.asarray(gamma)))
        module.bias.copy_(torch.from_numpy(np.asarray(beta)))
    return module


def split(x, batch_size, drop_last=False):
    parts = [x[s:s + batch_size] for s in range(0, len(x), batch_size)]
    return parts[:-1] if drop_last and len(parts[-1]) < batch_size else parts


@pytest.fixture
def images(rng):
    """19 samples of 5×4×3 (NHWC) float32: batches of 8 leave a short last batch of 3."""
    x = rng.normal(0.0, 1.0, (19, 5, 4, 3)) * np.array([2.0, 0.5, 8.0]) + np.array([3.0, -1.0, 40.0])
    return x.astype(np.float32)


@pytest.fixture
def affine(rng):
    return rng.uniform(0.5, 2.0, 3), rng.normal(0.0, 1.0, 3)


# ------------------------------------------------------------------------------ torch
@pytest.mark.parametrize("momentum", [0.1, 0.35, None], ids=["m0.1", "m0.35", "cumulative"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_channel_equals_torch_batchnorm2d(tmp_path, images, affine, momentum, layout):
    torch = pytest.importorskip("torch")
    gamma, beta = affine
    nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    x = images if layout == "NHWC" else nchw
    y, plan = run_bn(tmp_path, x, "channel", 8, gamma, beta, 1e-5, layout=layout, momentum=momentum)
    module = make_torch_bn(torch, torch.nn.BatchNorm2d, 3, gamma.astype(np.float32), beta.astype(np.float32),
                           1e-5, momentum, torch.float32)
    expected = np.concatenate(torch_batchnorm(torch, module, split(nchw, 8)))
    if layout == "NHWC":
        expected = expected.transpose(0, 2, 3, 1)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert plan.running.batches == 3 == int(module.num_batches_tracked)
    np.testing.assert_allclose(plan.running.mean, module.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plan.running.var, module.running_var.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["m0.1", "cumulative"])
def test_channel_float64_equals_torch_float64_tightly(tmp_path, images, affine, momentum):
    torch = pytest.importorskip("torch")
    gamma, beta = affine
    x = images.astype(np.float64)
    y, plan = run_bn(tmp_path, x, "channel", 8, gamma, beta, 1e-5, dtype="float64", momentum=momentum)
    module = make_torch_bn(torch, torch.nn.BatchNorm2d, 3, gamma, beta, 1e-5, momentum, torch.float64)
    expected = np.concatenate(torch_batchnorm(torch, module, split(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), 8)))
    np.testing.assert_allclose(y, expected.transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(plan.running.mean, module.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(plan.running.var, module.running_var.numpy(), rtol=1e-12)


@pytest.mark.parametrize("momentum", [0.1, 0.5, None], ids=["m0.1", "m0.5", "cumulative"])
def test_pixel_equals_torch_batchnorm1d_on_flattened_features(tmp_path, images, rng, momentum):
    torch = pytest.importorskip("torch")
    features = int(np.prod(images.shape[1:]))
    gamma, beta = rng.uniform(0.5, 2.0, features), rng.normal(0.0, 1.0, features)
    y, plan = run_bn(tmp_path, images, "pixel", 8, gamma, beta, 1e-5, momentum=momentum)
    flat = images.reshape(len(images), -1)
    module = make_torch_bn(torch, torch.nn.BatchNorm1d, features, gamma.astype(np.float32),
                           beta.astype(np.float32), 1e-5, momentum, torch.float32)
    expected = np.concatenate(torch_batchnorm(torch, module, split(flat, 8)))
    np.testing.assert_allclose(y.reshape(len(y), -1), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(plan.running.mean, module.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plan.running.var, module.running_var.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eps", [1e-5, 0.5, 3.0])
def test_eps_matches_torch(tmp_path, images, affine, eps):
    torch = pytest.importorskip("torch")
    gamma, beta = affine
    x = images.astype(np.float64)
    y, plan = run_bn(tmp_path, x, "channel", 8, gamma, beta, eps, dtype="float64")
    module = make_torch_bn(torch, torch.nn.BatchNorm2d, 3, gamma, beta, eps, 0.1, torch.float64)
    expected = np.concatenate(torch_batchnorm(torch, module, split(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), 8)))
    np.testing.assert_allclose(y, expected.transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-12)


def test_drop_last_leaves_out_the_short_batch_as_torch_never_sees_it(tmp_path, images, affine):
    torch = pytest.importorskip("torch")
    gamma, beta = affine
    y, plan = run_bn(tmp_path, images, "channel", 8, gamma, beta, drop_last=True)
    assert y.shape == (16, *images.shape[1:])
    module = make_torch_bn(torch, torch.nn.BatchNorm2d, 3, gamma.astype(np.float32), beta.astype(np.float32),
                           1e-5, 0.1, torch.float32)
    loader = torch.utils.data.DataLoader(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
                                         batch_size=8, drop_last=True)
    module.train()
    with torch.no_grad():
        expected = np.concatenate([module(b).numpy() for b in loader])
    np.testing.assert_allclose(y, expected.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    assert plan.running.batches == 2 == len(plan.batches)
    np.testing.assert_allclose(plan.running.mean, module.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plan.running.var, module.running_var.numpy(), rtol=1e-5, atol=1e-6)


def test_torch_refuses_a_single_value_per_channel_too():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError):
        torch.nn.BatchNorm1d(4).train()(torch.zeros(1, 4))


def test_eval_with_saved_running_statistics_equals_torch_eval(tmp_path, images, affine):
    """batchnorm --save-stats, then --eval --stats-from: the fixed map of torch's eval mode."""
    torch = pytest.importorskip("torch")
    from click.testing import CliRunner

    from normcli.cli import cli

    gamma, beta = affine
    train, test = images[:16].astype(np.float64), images[16:].astype(np.float64) * 1.5 + 2.0
    train_path, test_path = save(tmp_path, train), save(tmp_path, test)
    g, b = ",".join(repr(float(v)) for v in gamma), ",".join(repr(float(v)) for v in beta)
    stats, out = tmp_path / "running.json", tmp_path / "eval.npy"
    runner = CliRunner()
    result = runner.invoke(cli, ["batchnorm", train_path, "-o", str(tmp_path / "train_bn.npy"), "-b", "5",
                                 "--gamma", g, "--beta", b, "--momentum", "0.2", "--save-stats", str(stats), "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["batchnorm", test_path, "-o", str(out), "-b", "5", "--eval", "--stats-from",
                                 str(stats), "--gamma", g, "--beta", b, "--dtype", "float64", "-q"])
    assert result.exit_code == 0, result.output
    module = make_torch_bn(torch, torch.nn.BatchNorm2d, 3, gamma, beta, 1e-5, 0.2, torch.float64)
    torch_batchnorm(torch, module, split(np.ascontiguousarray(train.transpose(0, 3, 1, 2)), 5))
    module.eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(np.ascontiguousarray(test.transpose(0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(np.load(out), expected.transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------ numpy reference
@pytest.mark.parametrize("momentum", [0.1, 0.7, None], ids=["m0.1", "m0.7", "cumulative"])
@pytest.mark.parametrize("layout,scope", [("NHWC", "channel"), ("NCHW", "channel"), ("NHWC", "global"),
                                          ("NHWC", "pixel"), ("NHW", "channel"), ("NHW", "pixel"),
                                          ("NC", "channel"), ("NC", "global")])
@pytest.mark.parametrize("drop_last", [False, True])
def test_equals_float64_numpy_reference(tmp_path, rng, momentum, layout, scope, drop_last):
    shape = {"NHWC": (23, 4, 3, 2), "NCHW": (23, 2, 4, 3), "NHW": (23, 4, 3), "NC": (23, 5)}[layout]
    x = rng.normal(5.0, 2.0, shape) * rng.uniform(0.2, 3.0, shape[1:])
    axes = AXES[layout][scope]
    keyed_shape = np.mean(x, axis=axes, keepdims=True).shape
    gamma = rng.uniform(0.5, 2.0, keyed_shape)
    beta = rng.normal(0.0, 1.0, keyed_shape)
    y, plan = run_bn(tmp_path, x, scope, 6, gamma.reshape(-1), beta.reshape(-1), 1e-3, layout=layout,
                     dtype="float64", momentum=momentum, drop_last=drop_last)
    expected, running_mean, running_var, _ = ref_batchnorm(x, axes, 6, gamma, beta, 1e-3, momentum, drop_last)
    assert y.shape == expected.shape == ((18 if drop_last else 23), *shape[1:])
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(plan.running.mean, running_mean, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(plan.running.var, running_var, rtol=1e-12)


def test_batches_span_several_input_files(tmp_path, images, affine):
    gamma, beta = affine
    one, _ = run_bn(tmp_path, images, "channel", 8, gamma, beta, dtype="float64")
    parts = [save(tmp_path, images[:5]), save(tmp_path, images[5:11]), save(tmp_path, images[11:])]
    several, plan = run_bn(tmp_path, None, "channel", 8, gamma, beta, dtype="float64", inputs=parts)
    np.testing.assert_array_equal(several, one)
    expected = ref_batchnorm(images, (0, 1, 2), 8, gamma, beta, 1e-5)[0]
    np.testing.assert_allclose(several, expected, rtol=1e-10, atol=1e-12)


def test_shuffled_order_batches_the_permuted_samples(tmp_path, images, affine):
    gamma, beta = affine
    order = np.random.default_rng(7).permutation(len(images))
    y, _ = run_bn(tmp_path, images, "channel", 8, gamma, beta, dtype="float64", order=order)
    expected = ref_batchnorm(images[order], (0, 1, 2), 8, gamma, beta, 1e-5)[0]
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)


def test_integer_images(tmp_path, rng):
    x = rng.integers(0, 256, (10, 6, 5, 3), dtype=np.uint8)
    y, plan = run_bn(tmp_path, x, "channel", 4, dtype="float64", momentum=None)
    expected, running_mean, running_var, _ = ref_batchnorm(x, (0, 1, 2), 4, 1.0, 0.0, 1e-5, None)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(plan.running.mean, running_mean, rtol=1e-13)
    np.testing.assert_allclose(plan.running.var, running_var, rtol=1e-13)


def test_batch_summaries_report_each_batch_before_and_after(tmp_path, images, affine):
    gamma, beta = affine
    y, plan = run_bn(tmp_path, images, "channel", 8, gamma, beta)
    assert [b.size for b in plan.batches] == [8, 8, 3]
    for summary, batch, out in zip(plan.batches, split(images.astype(np.float64), 8), split(y.astype(np.float64), 8)):
        np.testing.assert_allclose(summary.mean_before, batch.mean(), rtol=1e-12)
        np.testing.assert_allclose(summary.var_before, batch.var(), rtol=1e-12)
        np.testing.assert_allclose(summary.mean_after, out.mean(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(summary.var_after, out.var(), rtol=1e-9)


def test_ignore_nan_leaves_nonfinite_out_of_batch_statistics(tmp_path, images, rng):
    x = images.astype(np.float64)
    x[1, 0, 0, 0], x[9, 2, 1, 1], x[17, 4, 3, 2] = np.nan, np.inf, -np.inf
    bad = ~np.isfinite(x)
    y, plan = run_bn(tmp_path, x, "channel", 8, dtype="float64", ignore_nan=True)
    expected, running_mean, running_var, _ = ref_batchnorm(np.where(bad, np.nan, x), (0, 1, 2), 8, 1.0, 0.0, 1e-5,
                                                        nan=True)
    np.testing.assert_array_equal(y[bad], x[bad])
    np.testing.assert_allclose(y[~bad], expected[~bad], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(plan.running.mean, running_mean, rtol=1e-12)
    np.testing.assert_allclose(plan.running.var, running_var, rtol=1e-12)


# ------------------------------------------------------------------------------ the tutorial identity
def test_one_batch_with_gamma_1_beta_0_equals_standardizing_it(tmp_path, tutorial_npy):
    first10 = np.load(tutorial_npy)[:10]
    assert first10.shape[-1] == 1  # one channel: per channel is global
    standardized_path = tmp_path / "std.npy"
    with open_dataset([save(tmp_path, first10)]) as dataset:
        transform(dataset, ScalePlan("global", lambda m: zscore(m)), str(standardized_path), dtype="float64", bins=0)
    standardized = np.load(standardized_path)
    bn0, plan = run_bn(tmp_path, first10, "channel", 10, eps=0.0, dtype="float64")
    assert len(plan.batches) == 1
    np.testing.assert_allclose(bn0, standardized, rtol=1e-12, atol=1e-12)
    # With PyTorch's eps the two differ by exactly the factor sqrt(var / (var + eps)).
    bn, _ = run_bn(tmp_path, first10, "channel", 10, dtype="float64")
    var = first10.var()
    assert np.abs(bn - standardized).max() > 0
    np.testing.assert_allclose(bn, standardized * np.sqrt(var / (var + 1e-5)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bn, standardized, rtol=1e-5 / var)


# ------------------------------------------------------------------------------ a single value per key
@pytest.mark.parametrize("layout,shape,scope", [("NHWC", (9, 3, 2, 2), "pixel"), ("NC", (9, 4), "channel"),
                                                ("NC", (9, 4), "pixel")])
def test_a_batch_with_one_value_per_key_is_a_usage_error(tmp_path, rng, layout, shape, scope):
    x = rng.normal(size=shape)  # batches of 4: the last holds one sample
    out = tmp_path / "never.npy"
    with open_dataset([save(tmp_path, x)], layout=layout) as dataset:
        keys = int(np.prod(shape[1:])) if scope == "pixel" else shape[-1]
        plan = BatchPlan(dataset, scope, Batching(4), np.ones(keys), np.zeros(keys), 1e-5)
        with pytest.raises(UsageMismatch, match="single value per key"):
            transform(dataset, plan, str(out), bins=0)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in tmp_path.glob("in*.npy"))
    # --drop-last leaves the lone sample out and the rest works.
    y, _ = run_bn(tmp_path, x, scope, 4, layout=layout, dtype="float64", drop_last=True)
    expected = ref_batchnorm(x, AXES[layout][scope], 4, 1.0, 0.0, 1e-5, drop_last=True)[0]
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_a_one_sample_batch_with_several_positions_is_fine_per_channel(tmp_path, rng):
    x = rng.normal(size=(9, 3, 2, 2))  # last batch: one image, still 6 values per channel
    y, _ = run_bn(tmp_path, x, "channel", 4, dtype="float64")
    expected = ref_batchnorm(x, (0, 1, 2), 4, 1.0, 0.0, 1e-5)[0]
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_ignore_nan_inf_passes_through_a_negative_gamma_unchanged(tmp_path, images):
    x = images.astype(np.float64)
    x[2, 1, 1, 0], x[10, 0, 0, 2] = np.inf, -np.inf
    bad = ~np.isfinite(x)
    gamma, beta = np.array([-1.5, 1.0, -0.5]), np.array([0.25, 0.0, -1.0])
    y, _ = run_bn(tmp_path, x, "channel", 8, gamma, beta, dtype="float64", ignore_nan=True)
    np.testing.assert_array_equal(y[bad], x[bad])
    expected = ref_batchnorm(np.where(bad, np.nan, x), (0, 1, 2), 8, gamma, beta, 1e-5, nan=True)[0]
    np.testing.assert_allclose(y[~bad], expected[~bad], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("drop_last", [False, True])
def test_shuffled_order_is_saved_so_outputs_pair_with_labels(tmp_path, rng, drop_last):
    """--save-stats records each output sample's input index and how the order was drawn."""
    from conftest import run_cli

    from normcli import statsfile

    x = rng.normal(3.0, 2.0, (13, 4, 4, 2))
    labels = np.arange(13) * 10  # what a user pairs the outputs with
    source, out, stats = save(tmp_path, x), tmp_path / "bn.npy", tmp_path / "bn.json"
    run_cli("batchnorm", source, "-o", out, "--batch-size", 4, "--shuffle", "--seed", 5, "--dtype", "float64",
            "--save-stats", stats, "--quiet", *(["--drop-last"] if drop_last else []))
    saved = statsfile.read(str(stats)).extra
    permutation = np.random.default_rng(5).permutation(13)  # numpy's PCG64, as the README says
    kept = 12 if drop_last else 13
    assert saved["order"] == permutation[:kept].tolist()
    assert saved["shuffle"]["generator"] == "numpy PCG64" and saved["shuffle"]["seed"] == 5
    y = np.load(out)
    assert len(y) == kept
    order = np.array(saved["order"])
    expected = ref_batchnorm(x[order], (0, 1, 2), 4, drop_last=drop_last)[0]
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
    paired = labels[order]  # output i belongs with the label of input order[i]
    assert paired.tolist() == [labels[i] for i in permutation[:kept]]


def test_unshuffled_batchnorm_saves_no_order(tmp_path, rng):
    from conftest import run_cli

    source, stats = save(tmp_path, rng.normal(size=(8, 3, 2))), tmp_path / "bn.json"
    run_cli("batchnorm", source, "-o", tmp_path / "bn.npy", "--batch-size", 4, "--save-stats", stats, "--quiet")
    doc = json.loads(stats.read_text())
    assert "order" not in doc and "shuffle" not in doc
