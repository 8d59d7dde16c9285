"""bench/effects.py: WER and CER broken down by the condition each utterance was made with."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from slimasr.evaluate.metrics import ErrorRateStats

_SCRIPT = Path(__file__).parents[2] / "bench" / "effects.py"
_spec = importlib.util.spec_from_file_location("bench_effects", _SCRIPT)
effects = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(effects)


def test_rates_per_condition_count_only_their_utterances() -> None:
    stats = ErrorRateStats()
    stats.append(["a", "b", "c"], hyps=["turn on the light", "turn off", "set a timer"],
                 refs=["turn on the light", "turn off the fan", "set a timer now"])
    condition_of = {
        "a": {"room": "near", "microphone": True, "channel": "none", "noise": None},
        "b": {"room": "none", "microphone": True, "channel": "opus", "noise": None},
        "c": {"room": "near", "microphone": False, "channel": "none", "noise": None},
    }
    by = effects._by_condition(stats, condition_of)
    assert "noise" not in by  # not recorded on these cuts: no row
    assert by["room"]["near"] == {"wer": pytest.approx(100 * 1 / 8), "cer": pytest.approx(100 * 4 / 32),
                                  "num_utterances": 2}
    assert by["room"]["none"]["wer"] == pytest.approx(50.0)  # 2 deletions of 4 words
    assert by["channel"]["opus"]["num_utterances"] == 1
    assert set(by["microphone"]) == {"True", "False"}
    assert by["microphone"]["True"]["wer"] == pytest.approx(100 * 2 / 8)
