"""The training log: ``train_log.csv`` (:data:`LOG_COLUMNS`) and, when importable, TensorBoard events."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

__all__ = ["LOG_COLUMNS", "TrainLog"]

LOG_COLUMNS = (
    "phase",
    "phase_index",
    "step",
    "epoch",
    "samples",
    "loss",
    "loss_first",
    "loss_last",
    "lr",
    "encoder_lr",
    "samples_per_s",
    "elapsed_s",
    "val_dice_first",
    "val_dice",
)
"""Columns of ``train_log.csv``. ``loss_first``/``loss_last``: first/last interaction round (training) or
first/last distilled block (distillation); ``val_dice_first``/``val_dice``: validation Dice after the first
and the last click."""


class TrainLog:
    """``train_log.csv`` (columns :data:`LOG_COLUMNS`) plus TensorBoard when importable; rank 0 only.

    On resume, rows after the checkpoint (``phase_index``, ``step``) are dropped so the log never holds
    steps the model has forgotten.
    """

    def __init__(self, out_dir: Path, resume_at: tuple[int, int] | None = None, enabled: bool = True) -> None:
        self.path = out_dir / "train_log.csv"
        self.enabled = enabled
        self.tb: Any = None
        if not enabled:
            return
        rows: list[dict[str, str]] = []
        if resume_at is not None and self.path.is_file():
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if (int(r["phase_index"]), int(r["step"])) <= resume_at]
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
            w.writeheader()
            w.writerows({k: r.get(k, "") for k in LOG_COLUMNS} for r in rows)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"))
        except Exception:  # TensorBoard not installed: CSV only
            self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=LOG_COLUMNS).writerow(
                {
                    k: ("" if row.get(k) is None else (repr(row[k]) if isinstance(row[k], float) else row[k]))
                    for k in LOG_COLUMNS
                }
            )
        if self.tb is not None:
            gstep = int(row["samples"])
            for k in ("loss", "loss_first", "loss_last", "val_dice_first", "val_dice", "samples_per_s"):
                if row.get(k) is not None:
                    self.tb.add_scalar(f"{row['phase']}/{k}", row[k], gstep)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    @staticmethod
    def read(path: str | Path) -> list[dict[str, str]]:
        with Path(path).open(newline="") as f:
            return list(csv.DictReader(f))
