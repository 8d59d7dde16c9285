"""Fixtures of the pruning tests."""

from __future__ import annotations

import weakref

import pytest

from slimasr.evaluate.cost import count_macs
from slimasr.prune import latency


@pytest.fixture
def mac_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch-1 timing of the latency table and of the plan's check reads the model's MACs
    (1 ms per MMAC) instead of the clock: these tests check what the latency path plans and
    records, and must not depend on how busy the machine is (measured: under two CPU-bound jobs
    a 2-run table could call a 30% saving unreachable)."""
    counted: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> ms (one input size)

    def clock(model, x, lens, n):
        if model not in counted:
            counted[model] = count_macs(model, x, lens) / 1e6
        return [counted[model]] * n
    monkeypatch.setattr(latency, "_time", clock)
