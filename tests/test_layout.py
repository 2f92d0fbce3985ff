"""Layout: the (samples, positions, channels) view every scope reduces, and its way back."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normcli.layout import DEFAULT_FOR_NDIM, LAYOUTS, Layout, resolve_layout


def reference_npc(x: np.ndarray, name: str) -> np.ndarray:
    """(samples, positions, channels) built element by element from the axis names alone:
    the channel index is the C axis, the position is the row-major index of the other
    non-sample axes in their order."""
    n = x.shape[0]
    named = dict(zip(name, x.shape))
    channels = named.get("C", 1)
    spatial = [a for a in name[1:] if a != "C"]
    positions = int(np.prod([named[a] for a in spatial])) if spatial else 1
    out = np.empty((n, positions, channels), x.dtype)
    for index in itertools.product(*(range(d) for d in x.shape)):
        where = dict(zip(name, index))
        c = where.get("C", 0)
        p = int(np.ravel_multi_index([where[a] for a in spatial], [named[a] for a in spatial])) if spatial else 0
        out[where["N"], p, c] = x[index]
    return out


@st.composite
def layout_arrays(draw, names=LAYOUTS):
    name = draw(st.sampled_from(names))
    shape = tuple(draw(st.integers(1, 4)) for _ in name)
    x = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape) * 7 - 11
    return name, x


@settings(max_examples=60, deadline=None)
@given(layout_arrays())
def test_npc_places_every_value_by_its_axis_names(case):
    name, x = case
    layout = Layout(name)
    view = layout.npc(x)
    expected = reference_npc(x, name)
    assert view.shape == expected.shape
    np.testing.assert_array_equal(view, expected)


@settings(max_examples=60, deadline=None)
@given(layout_arrays())
def test_npc_is_a_view_of_c_contiguous_data(case):
    name, x = case
    view = Layout(name).npc(x)
    assert np.shares_memory(view, x)


@settings(max_examples=60, deadline=None)
@given(layout_arrays())
def test_to_sample_inverts_npc_for_every_sample(case):
    name, x = case
    layout = Layout(name)
    view = layout.npc(x)
    sample_shape = x.shape[1:]
    for i in range(x.shape[0]):
        back = layout.to_sample(view[i], sample_shape)
        assert back.shape == sample_shape
        np.testing.assert_array_equal(back, x[i])
        # per-key vectors (pixel-scope statistics are flat, P * C long) go back the same way
        np.testing.assert_array_equal(layout.to_sample(view[i].reshape(-1), sample_shape), x[i])


@settings(max_examples=40, deadline=None)
@given(layout_arrays())
def test_to_sample_then_npc_round_trips_keys(case):
    name, x = case
    layout = Layout(name)
    sample_shape = x.shape[1:]
    keys = np.arange(layout.npc(x).shape[1] * layout.npc(x).shape[2], dtype=np.float64) + 0.5
    sample = layout.to_sample(keys, sample_shape)
    assert sample.dtype == keys.dtype
    np.testing.assert_array_equal(layout.npc(sample[None]).reshape(-1), keys)


@pytest.mark.parametrize("name, shape, channels", [
    ("NHWC", (5, 4, 3, 2), 2), ("NCHW", (5, 3, 4, 2), 3), ("NHW", (5, 4, 3), 1),
    ("NC", (5, 6), 6), ("N", (5,), 1),
])
def test_channels_and_has_channels(name, shape, channels):
    layout = Layout(name)
    assert layout.channels(shape[1:]) == channels
    assert layout.has_channels == ("C" in name)
    assert layout.ndim == len(shape)
    assert layout.npc(np.zeros(shape)).shape[2] == channels


def test_image_view_of_one_sample():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 255, (4, 3, 2))
    np.testing.assert_array_equal(Layout("NHWC").image(hwc), hwc)
    np.testing.assert_array_equal(Layout("NCHW").image(np.ascontiguousarray(hwc.transpose(2, 0, 1))), hwc)
    np.testing.assert_array_equal(Layout("NHW").image(hwc[..., 0]), hwc[..., :1])
    for name in ("NC", "N"):
        with pytest.raises(ValueError, match="holds no images"):
            Layout(name).image(hwc[0, 0])


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
def test_resolve_layout_defaults_and_named(ndim):
    assert resolve_layout(None, ndim) == Layout(DEFAULT_FOR_NDIM[ndim])
    assert resolve_layout(None, ndim).ndim == ndim
    assert resolve_layout("nchw", 4) == Layout("NCHW")


def test_default_layouts_follow_the_contract():
    assert DEFAULT_FOR_NDIM == {4: "NHWC", 3: "NHW", 2: "NC", 1: "N"}
