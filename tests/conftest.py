from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

# The parity fixtures in compact form, in the repository (tests/fixtures/parity/README.md); the full ones
# beside the checkout (../shared) are only needed to check the compact form against them.
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "parity"
SHARED_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "parity"
MRICRON = Path("/usr/share/mricron/templates")


def _need(path: Path, why: str) -> Path:
    if not path.exists():
        pytest.skip(f"{path} absent: {why}")
    return path


def load_compact_fixture(name: str, folder: Path = FIXTURES) -> dict:
    """A parity fixture as ``torch.load`` of the full ``NAME.pt`` gives it: ``config``, ``image_seed``,
    ``inputs``, ``outputs`` from ``NAME.npz``, and ``state_dict`` remade by the weights rule from the
    manifest's keys, checked bit for bit against the digest of the original weights."""
    from tests.modeling.reference import fixture_weights, state_dict_sha256

    meta = json.loads((folder / f"{name}.manifest.json").read_text())
    with np.load(folder / f"{name}.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    inputs: dict[str, dict] = {}
    for key, value in arrays.items():
        if key.startswith("inputs/"):
            _, case, part = key.split("/")
            inputs.setdefault(case, {"mask": None})[part] = torch.from_numpy(value)
    outputs = {k[len("outputs/") :]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("outputs/")}
    state_dict = fixture_weights(meta["keys"])
    want = str(arrays["state_dict_sha256"])
    if state_dict_sha256(state_dict) != want:
        raise AssertionError(f"the weights rule no longer remakes {name}'s fixture weights (sha256 {want[:12]}...)")
    return {
        "config": meta["config"],
        "image_seed": int(arrays["image_seed"]),
        "inputs": inputs,
        "outputs": outputs,
        "state_dict": state_dict,
    }


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return _need(FIXTURES, "the compact parity fixtures are part of the repository (tests/fixtures/parity)")


@pytest.fixture(scope="session")
def shared_parity_dir() -> Path:
    return _need(SHARED_FIXTURES, "the full parity fixtures live in ../shared/fixtures/parity beside the checkout")


@pytest.fixture(scope="session")
def load_fixture(parity_dir: Path):
    cache: dict[str, dict] = {}

    def load(name: str) -> dict:
        if name not in cache:
            cache[name] = load_compact_fixture(name, parity_dir)
        return cache[name]

    return load


@pytest.fixture(scope="session")
def manifest(parity_dir: Path):
    def load(name: str) -> dict:
        return json.loads((parity_dir / f"{name}.manifest.json").read_text())

    return load


@pytest.fixture(scope="session")
def mricron_dir() -> Path:
    return _need(MRICRON, "install Debian's mricron-data (apt-get install mricron-data)")
