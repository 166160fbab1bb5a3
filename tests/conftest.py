from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "parity"
MRICRON = Path("/usr/share/mricron/templates")


def _need(path: Path, why: str) -> Path:
    if not path.exists():
        pytest.skip(f"{path} absent: {why}")
    return path


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return _need(FIXTURES, "parity fixtures live in ../shared/fixtures/parity beside the checkout")


@pytest.fixture(scope="session")
def load_fixture(parity_dir: Path):
    cache: dict[str, dict] = {}

    def load(name: str) -> dict:
        if name not in cache:
            cache[name] = torch.load(parity_dir / f"{name}.pt", weights_only=True)
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
