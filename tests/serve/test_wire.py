"""The NNIA packed-array format: byte-compatible with nninteractive-client both ways, strict on input."""

from __future__ import annotations

import numpy as np
import pytest
from nnInteractive.inference.remote.serialization import pack_array, unpack_array

from volsam.serve import wire

ARRAYS = [
    np.random.default_rng(0).normal(size=(1, 9, 10, 11)).astype(np.float32),
    np.random.default_rng(1).random((9, 10, 11)) > 0.7,
    np.arange(60, dtype=np.int16).reshape(3, 4, 5),
    np.zeros((4, 5, 6), np.uint8),  # all zeros: blosc2's special-value frame
]


@pytest.mark.parametrize("a", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_round_trips_with_the_client(a):
    ours = wire.unpack(pack_array(a), max_elements=10**6)
    assert ours.dtype == a.dtype and np.array_equal(ours, a)
    theirs = unpack_array(wire.pack(a))
    assert theirs.dtype == a.dtype and np.array_equal(theirs, a)


def test_an_empty_array_round_trips():
    a = np.zeros((0, 3), np.float64)
    b = wire.unpack(wire.pack(a), max_elements=1)
    assert b.shape == (0, 3) and b.dtype == np.float64


def test_limits_are_checked_from_the_header():
    a = np.zeros((1, 20, 20, 20), np.float32)
    with pytest.raises(ValueError, match="over the limit of 7999"):
        wire.unpack(wire.pack(a), max_elements=7999)
    with pytest.raises(ValueError, match=r"expected an array of shape \(1, 20, 20, 21\)"):
        wire.unpack(wire.pack(a), max_elements=10**6, shape=(1, 20, 20, 21))
    with pytest.raises(ValueError, match="dtype 'float32' not accepted"):
        wire.unpack(wire.pack(a), max_elements=10**6, dtypes=frozenset({"uint8"}))


def test_every_truncation_is_a_value_error():
    packed = wire.pack(np.random.default_rng(2).random((1, 8, 8, 8)).astype(np.float32))
    for n in range(len(packed)):
        with pytest.raises(ValueError):
            wire.unpack(packed[:n], max_elements=10**6)
