"""The compact parity fixtures in tests/fixtures/parity are the full ones of ../shared, bit for bit."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import FIXTURES, load_compact_fixture

MINI = ["sam_med3d_mini", "fastsam3d_mini"]
MANIFESTS = ["sam_med3d_mini", "fastsam3d_mini", "sam_med3d_full", "fastsam3d_full"]


def _equal(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("name", MINI)
def test_compact_fixture_equals_full_one(name, shared_parity_dir):
    full = torch.load(shared_parity_dir / f"{name}.pt", weights_only=True)
    got = load_compact_fixture(name)
    assert got["config"] == full["config"]
    assert got["image_seed"] == full["image_seed"]
    assert got["inputs"].keys() == full["inputs"].keys()
    for case, inp in full["inputs"].items():
        assert got["inputs"][case].keys() == inp.keys(), case
        assert all(_equal(got["inputs"][case][k], v) for k, v in inp.items()), case
    assert got["outputs"].keys() == full["outputs"].keys()
    assert [k for k, v in full["outputs"].items() if not _equal(got["outputs"][k], v)] == []
    assert list(got["state_dict"]) == list(full["state_dict"])
    assert [k for k, v in full["state_dict"].items() if not _equal(got["state_dict"][k], v)] == []


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_the_full_one(name, shared_parity_dir):
    file = f"{name}.manifest.json"
    assert (FIXTURES / file).read_bytes() == (shared_parity_dir / file).read_bytes()


def test_compact_fixtures_stay_small():
    """The compact form is part of every clone: under 5 MB in all."""
    files = [p for p in FIXTURES.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {f"{n}.npz" for n in MINI} | {f"{n}.manifest.json" for n in MANIFESTS}
    assert sum(p.stat().st_size for p in files) < 5_000_000

