from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from . import one_thread, write_dataset


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Training tests run on one thread: on this shared 2-core machine two threads are far slower."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("toy"))
