"""Group norm through passes.transform(GroupPlan) against torch.nn.GroupNorm and a float64 numpy
reference: groups 1 (layer norm), a divisor of C, and C (instance norm), NHWC and NCHW."""

from __future__ import annotations


import numpy as np
import pytest

from normcli.plans import GroupPlan
from normcli.sources import Dataset, open_dataset

from helpers import fresh_path, ref_groupnorm, save, transform

C = 6


def run_gn(folder, x, groups, gamma, beta, eps=1e-5, *, layout=None, dtype=None):
    out = fresh_path(folder, "gn", ".npy")
    with open_dataset([save(folder, x)], layout=layout) as dataset:
        result = transform(dataset, GroupPlan(groups, np.asarray(gamma, np.float64), np.asarray(beta, np.float64),
                                              eps), str(out), dtype=dtype, bins=0)
    return np.load(out), result


@pytest.fixture
def nchw(rng):
    """9 samples of 6 channels, 4×5, each channel and each sample with its own offset and spread."""
    x = rng.normal(0.0, 1.0, (9, C, 4, 5))
    x *= rng.uniform(0.3, 4.0, (9, C, 1, 1))
    x += rng.normal(0.0, 10.0, (9, C, 1, 1))
    return x.astype(np.float32)


@pytest.fixture
def affine(rng):
    return rng.uniform(0.5, 2.0, C), rng.normal(0.0, 1.0, C)


def to_nhwc(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


# ------------------------------------------------------------------------------ torch
@pytest.mark.parametrize("groups", [1, 2, 3, C], ids=["layer", "g2", "g3", "instance"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_equals_torch_groupnorm(tmp_path, nchw, affine, groups, layout):
    torch = pytest.importorskip("torch")
    gamma, beta = affine
    x = nchw if layout == "NCHW" else to_nhwc(nchw)
    y, _ = run_gn(tmp_path, x, groups, gamma, beta, layout=layout)
    module = torch.nn.GroupNorm(groups, C, eps=1e-5)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(gamma.astype(np.float32)))
        module.bias.copy_(torch.from_numpy(beta.astype(np.float32)))
        expected = module(torch.from_numpy(nchw)).numpy()
    if layout == "NHWC":
        expected = to_nhwc(expected)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 3, C])
@pytest.mark.parametrize("eps", [1e-5, 0.25])
def test_equals_torch_groupnorm_in_float64(tmp_path, nchw, affine, groups, eps):
    torch = pytest.importorskip("torch")
    gamma, beta = affine
    x = nchw.astype(np.float64)
    y, _ = run_gn(tmp_path, to_nhwc(x), groups, gamma, beta, eps, layout="NHWC", dtype="float64")
    module = torch.nn.GroupNorm(groups, C, eps=eps, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(gamma))
        module.bias.copy_(torch.from_numpy(beta))
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, to_nhwc(expected), rtol=1e-10, atol=1e-12)


def test_layer_and_instance_norm_equal_torch_layernorm_and_instancenorm(tmp_path, nchw):
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(nchw.astype(np.float64))
    ones, zeros = np.ones(C), np.zeros(C)
    layer, _ = run_gn(tmp_path, nchw.astype(np.float64), 1, ones, zeros, layout="NCHW", dtype="float64")
    expected = torch.nn.functional.layer_norm(x, x.shape[1:], eps=1e-5).numpy()
    np.testing.assert_allclose(layer, expected, rtol=1e-10, atol=1e-12)
    instance, _ = run_gn(tmp_path, nchw.astype(np.float64), C, ones, zeros, layout="NCHW", dtype="float64")
    expected = torch.nn.functional.instance_norm(x, eps=1e-5).numpy()
    np.testing.assert_allclose(instance, expected, rtol=1e-10, atol=1e-12)


def test_tabular_nc_equals_torch(tmp_path, rng, affine):
    torch = pytest.importorskip("torch")
    gamma, beta = affine
    x = rng.normal(3.0, 2.0, (11, C))
    y, _ = run_gn(tmp_path, x, 2, gamma, beta, layout="NC", dtype="float64")
    module = torch.nn.GroupNorm(2, C, eps=1e-5, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(gamma))
        module.bias.copy_(torch.from_numpy(beta))
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------ numpy reference
@pytest.mark.parametrize("groups", [1, 2, 3, C])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("eps", [1e-5, 0.0, 2.0])
def test_equals_float64_numpy_reference(tmp_path, nchw, affine, groups, layout, eps):
    gamma, beta = affine
    x = nchw.astype(np.float64)
    y, result = run_gn(tmp_path, x if layout == "NCHW" else to_nhwc(x), groups, gamma, beta, eps, layout=layout,
                       dtype="float64")
    expected = ref_groupnorm(x, groups, gamma, beta, eps)
    np.testing.assert_allclose(y, expected if layout == "NCHW" else to_nhwc(expected), rtol=1e-12, atol=1e-12)
    # The report is per channel: the output's per-channel statistics.
    per_channel = expected.transpose(1, 0, 2, 3).reshape(C, -1)
    np.testing.assert_allclose(result.after.moments.mean, per_channel.mean(axis=1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.after.moments.var(), per_channel.var(axis=1), rtol=1e-9)


def test_group_statistics_are_per_sample_and_group(tmp_path, nchw):
    """With gamma 1 and beta 0 every (sample, group) comes out with mean 0 and variance var/(var+eps)."""
    groups = 3
    x = nchw.astype(np.float64)
    y, _ = run_gn(tmp_path, x, groups, np.ones(C), np.zeros(C), 1e-5, layout="NCHW", dtype="float64")
    grouped_in = x.reshape(len(x), groups, -1)
    grouped_out = y.reshape(len(y), groups, -1)
    var = grouped_in.var(axis=2)
    np.testing.assert_allclose(grouped_out.mean(axis=2), 0.0, atol=1e-12)
    np.testing.assert_allclose(grouped_out.var(axis=2), var / (var + 1e-5), rtol=1e-12)
    # ...while channels inside a group keep their differences (it is not instance norm).
    assert np.abs(y.reshape(len(y), C, -1).mean(axis=2)).max() > 0.1


def test_single_channel_nhw_layer_norm(tmp_path, rng):
    x = rng.normal(10.0, 3.0, (7, 6, 5))
    y, _ = run_gn(tmp_path, x, 1, [2.0], [0.5], layout="NHW", dtype="float64")
    expected = ref_groupnorm(x[:, None], 1, [2.0], [0.5], 1e-5)[:, 0]
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_constant_group_gives_beta_not_nan(tmp_path, nchw, affine):
    gamma, beta = affine
    x = nchw.astype(np.float64)
    x[2, 0:2] = 5.0  # sample 2, group 0 of 3: constant
    y, _ = run_gn(tmp_path, x, 3, gamma, beta, layout="NCHW", dtype="float64")
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y[2, 0:2], np.broadcast_to(beta[0:2, None, None], (2, 4, 5)), atol=1e-12)
    np.testing.assert_allclose(y, ref_groupnorm(x, 3, gamma, beta, 1e-5), rtol=1e-12, atol=1e-12)


def test_chunking_does_not_change_the_result(tmp_path, nchw, affine, monkeypatch):
    gamma, beta = affine
    x = to_nhwc(nchw.astype(np.float64))
    whole, _ = run_gn(tmp_path, x, 2, gamma, beta, layout="NHWC", dtype="float64")
    monkeypatch.setattr(Dataset, "block_bytes", 1)  # the blocks of every dataset opened from now
    chunked, result = run_gn(tmp_path, x, 2, gamma, beta, layout="NHWC", dtype="float64")
    np.testing.assert_array_equal(chunked, whole)
    assert result.after.moments.count.sum() == x.size


def test_far_from_zero_the_group_moments_are_exact(tmp_path, rng):
    """1e9 + noise of std 1, images of 64x64: each group's mean and variance are the shifted, exact
    ones of every other command, so the output is what exact arithmetic gives to float64's
    resolution at 1e9 (the naive group mean was off by ~1e-3 std here)."""
    from fractions import Fraction

    x = 1e9 + rng.normal(0.0, 1.0, (2, 128, 128, 3))  # NHWC, instance norm
    out, _ = run_gn(tmp_path, x, 3, np.ones(3), np.zeros(3), eps=0.0, dtype="float64")
    for n in range(2):
        for c in range(3):
            values = [Fraction(float(v)) for v in x[n, ..., c].reshape(-1)]
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / len(values)
            want = (x[n, :2, :2, c] - float(mean)) / np.sqrt(float(var))
            # float(mean) is within half of 1e9's spacing (1.2e-7): so is each output
            assert np.abs(out[n, :2, :2, c] - want).max() <= 2.5e-7
