"""Scope: the shape its keys take, and per-key values laid out in that shape and back, for every
scope the (samples, positions, channels) view allows, against numpy reductions over the named axes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normcli.layout import LAYOUTS, Layout
from normcli.scopes import CHANNELS, POSITIONS, SAMPLES, SCOPES, Scope

# every choice of reduced axes: the four scopes and the ones a user may add
EVERY_SCOPE = [Scope("+".join(map(str, reduced)), reduced)
               for k in (1, 2, 3) for reduced in itertools.combinations((SAMPLES, POSITIONS, CHANNELS), k)]


def named_axes(scope: Scope, layout: str, ndim: int) -> tuple[int, ...]:
    """The axes of an (N, *sample) array that `scope` reduces, from the layout's axis names alone."""
    wanted = {"N": SAMPLES, "C": CHANNELS}
    return tuple(a for a, name in enumerate(layout[:ndim]) if wanted.get(name, POSITIONS) in scope.reduced)


@st.composite
def cases(draw):
    layout = draw(st.sampled_from(LAYOUTS))
    shape = tuple(draw(st.integers(1, 4)) for _ in layout)
    return draw(st.sampled_from(EVERY_SCOPE)), layout, np.random.default_rng(draw(st.integers(0, 99))).random(shape)


@settings(max_examples=80, deadline=None)
@given(cases())
def test_key_grid_lays_out_key_order_as_numpy_reduces_the_named_axes(case):
    scope, name, x = case
    layout = Layout(name)
    in_key_order = layout.npc(x).max(axis=scope.reduced).reshape(-1)
    expected = x.max(axis=named_axes(scope, name, x.ndim), keepdims=True)
    if scope.by_position:  # laid out as the keys' shape: the kept axes in the sample's order
        grid = scope.key_grid(in_key_order, layout, x.shape[1:])
        assert grid.shape == scope.key_shape(layout, x.shape[1:], len(x))
        np.testing.assert_array_equal(grid, expected.reshape(grid.shape))
        np.testing.assert_array_equal(scope.key_order(grid, layout, x.shape[1:]), in_key_order)
    assert scope.keys(layout, x.shape[1:], len(x)) == in_key_order.size == expected.size


@pytest.mark.parametrize("layout, sample_shape, shapes", [
    ("NHWC", (3, 4, 2), {"global": (), "channel": (2,), "sample": (5,), "pixel": (3, 4, 2)}),
    ("NCHW", (2, 3, 4), {"global": (), "channel": (2,), "sample": (5,), "pixel": (2, 3, 4)}),
    ("NHW", (3, 4), {"global": (), "channel": (1,), "sample": (5,), "pixel": (3, 4)}),
    ("N", (), {"global": (), "channel": (1,), "sample": (5,), "pixel": ()}),
])
def test_key_shape_of_each_scope(layout, sample_shape, shapes):
    assert {name: s.key_shape(Layout(layout), sample_shape, 5) for name, s in SCOPES.items()} == shapes


def test_rows_are_one_for_a_single_key_or_keys_by_position_else_one_per_key():
    assert [SCOPES[name].row_labels(3) for name in SCOPES] == [["all"], ["0", "1", "2"], ["0", "1", "2"], ["pixel"]]
    assert Scope("position", (SAMPLES, CHANNELS)).row_labels(12) == ["position"]
    assert [s.one_histogram for s in SCOPES.values()] == [False, False, False, True]
