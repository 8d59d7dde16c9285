"""Training curves: ``OUT/train_log.csv`` (always) and TensorBoard (when installed).

The CSV grows one row at a time (appended and flushed). A run killed mid-write may leave a partial
last line, and rows past its last checkpoint; :meth:`TrainLog.open` on resume rewrites the file
atomically keeping only complete rows up to the checkpoint's step, so a resumed run's log reads
like an uninterrupted one's.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from slimasr.io import write_text_atomic

CSV_NAME = "train_log.csv"
CSV_FIELDS = ("step", "epoch", "loss", "lr", "grad_norm", "time")  # time: training seconds
TENSORBOARD_DIR = "tensorboard"


class TrainLog:
    """Rows of ``CSV_FIELDS`` (step, epoch, loss, lr, grad_norm, time) plus dev metrics."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = True):
        self.path = Path(out_dir) / CSV_NAME
        self._file: Any = None
        self._writer: Any = None
        self._tb = _tensorboard_writer(Path(out_dir) / TENSORBOARD_DIR) if tensorboard else None

    def open(self, resume_step: int | None = None) -> TrainLog:
        """Start a fresh log, or (``resume_step`` given) keep the rows up to that step."""
        rows = _complete_rows(self.path, resume_step) if resume_step is not None else []
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.path, buffer.getvalue())
        self._file = self.path.open("a", encoding="utf-8", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=CSV_FIELDS, lineterminator="\n")
        return self

    def step(self, step: int, epoch: int, loss: float, lr: float, grad_norm: float,
             seconds: float) -> None:
        row = {"step": step, "epoch": epoch, "loss": f"{loss:.6g}", "lr": f"{lr:.6g}",
               "grad_norm": f"{grad_norm:.6g}", "time": f"{seconds:.3f}"}
        self._writer.writerow(row)
        self._file.flush()
        if self._tb is not None:
            for key in ("loss", "lr", "grad_norm"):
                self._tb.add_scalar(f"train/{key}", float(row[key]), step)

    def dev(self, step: int, metrics: dict[str, float]) -> None:
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(f"dev/{key}", value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()


def _complete_rows(path: Path, max_step: int) -> list[dict[str, str]]:
    """Rows of an existing log with every field present and ``step <= max_step``."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]  # a row cut short by a kill
    rows = []
    for row in csv.DictReader(lines):
        if all(row.get(k) not in (None, "") for k in CSV_FIELDS) and int(row["step"]) <= max_step:
            rows.append({k: row[k] for k in CSV_FIELDS})
    return rows


def _tensorboard_writer(log_dir: Path) -> Any:
    """A SummaryWriter, or None when the tensorboard package is not installed (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))
