"""The package's internal imports form no circle and modeling/ imports nothing above it
(scripts/import_graph.py reads the source with ``ast``)."""

from __future__ import annotations

import pytest

from tests import load_script


@pytest.fixture(scope="module")
def graph_tool():
    return load_script("import_graph")


@pytest.fixture(scope="module")
def graph(graph_tool) -> dict[str, dict[str, bool]]:
    return graph_tool.import_graph()


def test_no_import_circles(graph_tool, graph):
    assert graph_tool.cycles(graph) == []


def test_modeling_imports_only_modeling_and_config(graph):
    up = {(m, t) for m, deps in graph.items() if m.startswith("volsam.modeling") for t in deps}
    assert {(m, t) for m, t in up if not (t.startswith("volsam.modeling") or t == "volsam.config")} == set()


def test_graph_sees_late_and_type_only_imports(graph_tool, tmp_path):
    """A circle closed by a function-level or TYPE_CHECKING import is still found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.b import g\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    g = graph_tool.import_graph(tmp_path, "pkg")
    assert g["pkg.a"] == {"pkg.b": False}
    assert g["pkg.b"] == {"pkg.a": True}
    assert g["pkg.c"] == {"pkg.a": False}
    assert graph_tool.cycles(g) == [["pkg.a", "pkg.b"]]

