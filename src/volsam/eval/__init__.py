"""Evaluation: per-target metrics (:mod:`volsam.eval.metrics`) and datasets (:mod:`volsam.eval.datasets`).

Submodules are imported explicitly; importing this package loads nothing heavy.
"""
