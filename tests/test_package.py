"""The top-level ``volsam`` package."""

from __future__ import annotations


def test_session_is_exported_at_the_top_level():
    import volsam
    from volsam.session import Session

    assert volsam.Session is Session and "Session" in volsam.__all__
