"""The prepared feed check (`FeedBinder`, what every call runs) accepts exactly what the full
check (`bind_feeds`) accepts, binds the same arrays and batch, and refuses with the same error."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import drug as dg
from drug.runtime.feeds import FeedBinder, bind_feeds


def _inputs():
    g = dg.Graph()
    return [
        g.input("x", (None, 3)),
        g.input("ids", (None,), dtype="int32"),
        g.input("m", (2, None, 2)),  # a batch axis in the middle
        g.input("c", (4,)),  # no batch axis
    ]


def _outcome(bind, inputs, feeds, check_finite=False):
    try:
        arrays, batch = bind(inputs, feeds, check_finite)
    except Exception as error:  # noqa: BLE001 - the error itself is what is compared
        return type(error), str(error)
    return {k: (v.shape, v.dtype, v.flags.c_contiguous, v.tolist()) for k, v in arrays.items()}, batch


_VARIANTS = ["ok", "dtype", "shape", "batch", "transposed", "list", "missing", "extra", "subclass"]


@settings(max_examples=80, deadline=None)
@given(batch=st.integers(0, 3), variant=st.sampled_from(_VARIANTS), which=st.integers(0, 3))
def test_prepared_check_agrees_with_the_full_check(batch, variant, which):
    inputs = _inputs()
    rng = np.random.default_rng(batch)
    feeds = {
        "x": rng.standard_normal((batch, 3)).astype(np.float32),
        "ids": np.arange(batch, dtype=np.int32),
        "m": rng.standard_normal((2, batch, 2)).astype(np.float32),
        "c": np.ones(4, np.float32),
    }
    name = inputs[which].name
    if variant == "dtype":
        feeds[name] = feeds[name].astype(np.float64)
    elif variant == "shape":
        feeds[name] = feeds[name][..., None]
    elif variant == "batch" and name != "c":
        feeds[name] = np.concatenate([feeds[name], feeds[name][:1] if feeds[name].shape[0] else feeds[name]])
    elif variant == "transposed":
        feeds[name] = np.asfortranarray(feeds[name])
    elif variant == "list":
        feeds[name] = feeds[name].tolist()
    elif variant == "missing":
        del feeds[name]
    elif variant == "extra":
        feeds["y"] = feeds.pop(name)
    elif variant == "subclass":
        feeds[name] = np.ma.masked_array(feeds[name])
    binder = FeedBinder(inputs)
    prepared = _outcome(lambda _, f, c: binder(f, c), inputs, feeds)
    assert prepared == _outcome(bind_feeds, inputs, feeds)


def test_check_finite_takes_the_full_check():
    inputs = _inputs()[:1]
    feeds = {"x": np.array([[0.0, np.nan, 1.0]], np.float32)}
    assert FeedBinder(inputs)(feeds, False)[1] == 1
    assert _outcome(lambda _, f, c: FeedBinder(inputs)(f, c), inputs, feeds, True) == _outcome(
        bind_feeds, inputs, feeds, True
    )
