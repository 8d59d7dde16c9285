"""The shipped models (the teacher and its causal streaming student): their weights load as float32
and match their recorded hash; utterances of the default corpus, synthesized here from their
recorded plans, transcribe exactly as recorded; a shipped name works wherever a model folder does
(Python, CLI, pipeline)."""

from __future__ import annotations

import argparse
import json
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open

import slimasr
from slimasr import shipped
from slimasr.cli import _resolve_shipped, main
from slimasr.errors import ConfigError, DataError
from slimasr.io import file_sha256
from slimasr.shipped import SHIPPED_DIR, pretrained, provenance, resolve_model

NAME = "smarthome-crnn"
NAMES = ("smarthome-crnn", "smarthome-crnn-causal")  # every shipped model
MAX_BYTES = 16 * 1024 * 1024  # the limit on the shipped folder
needs_espeak = pytest.mark.skipif(importlib.util.find_spec("espeakng_loader") is None,
                                  reason="espeakng-loader is not installed")


@pytest.fixture(scope="module")
def recorded():
    return provenance(NAME)["recorded_transcripts"]


def render(item: dict, synth_config: dict) -> np.ndarray:
    """The recorded utterance's int16 samples, synthesized again from its plan."""
    from slimasr.data.synth import SynthConfig, UtterancePlan, render_utterance

    return render_utterance(UtterancePlan(**item["plan"]), SynthConfig(**synth_config))


def test_pretrained_is_the_shipped_folder():
    assert slimasr.pretrained(NAME) == SHIPPED_DIR / "smarthome_crnn"
    assert slimasr.pretrained("smarthome-crnn-causal") == SHIPPED_DIR / "smarthome_crnn_causal"
    assert all(pretrained(name).is_dir() for name in NAMES)


def test_pretrained_does_not_import_torch():
    code = ("import sys, slimasr; slimasr.pretrained('smarthome-crnn'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "False\n"


@pytest.mark.parametrize("name", NAMES)
def test_weights_are_float16_on_disk_and_load_as_float32(name):
    folder = pretrained(name)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F16", "I64"}  # I64: BatchNorm's num_batches_tracked
    model = slimasr.load_model(folder)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert sum(p.numel() for p in model.parameters()) == provenance(name)["weights"]["params"]


@pytest.mark.parametrize("name", NAMES)
def test_weights_match_their_recorded_sha256(name):
    folder = pretrained(name)
    assert file_sha256(folder / "model.safetensors") == provenance(name)["weights"]["sha256"]


@pytest.mark.parametrize("name", NAMES)
def test_folder_is_under_16_mb(name):
    assert sum(p.stat().st_size for p in pretrained(name).iterdir()) < MAX_BYTES


@pytest.mark.parametrize("name", NAMES)
def test_fp16_wer_is_within_0_1_of_fp32(name):
    results = provenance(name)["results"]
    for key in ("wer_greedy", "wer_lm"):
        assert abs(results["fp16"][key] - results["fp32"][key]) <= 0.1


def test_the_student_was_trained_on_the_teachers_corpus():
    """The demo compares the two on one test split: it must be unseen by both."""
    teacher, student = provenance(NAME), provenance("smarthome-crnn-causal")
    assert student["corpus"]["fingerprint"] == teacher["corpus"]["fingerprint"]
    assert student["training"]["steps"] == sum(r["steps"] for r in student["training"]["runs"])
    assert slimasr.load_model(pretrained("smarthome-crnn-causal")).streaming_problem() is None


@needs_espeak
@pytest.mark.parametrize("name", NAMES)
def test_recorded_utterances_render_and_transcribe_as_recorded(name):
    """The samples themselves may differ by float rounding from machine to machine (the resampler
    and filters; measured 1 int16 step in 0.02% of samples between two runs on one machine, and
    silence trimmed a few samples elsewhere), so the check is the transcript, not the samples."""
    from slimasr.recognize import Recognizer

    recognizer, recorded = Recognizer(pretrained(name)), provenance(name)["recorded_transcripts"]
    assert len(recorded["utterances"]) == 5
    for item in recorded["utterances"]:
        audio = render(item, recorded["synth_config"])
        assert recognizer.transcribe(audio.astype(np.float32) / 32768.0) == item["greedy"]


@needs_espeak
def test_cli_transcribes_with_a_shipped_name(recorded, tmp_path, capsys):
    item = recorded["utterances"][0]
    wav = tmp_path / "utterance.wav"
    sf.write(wav, render(item, recorded["synth_config"]), 16000, subtype="PCM_16")
    assert main(["transcribe", "--model", NAME, str(wav)]) == 0
    assert capsys.readouterr().out == f"{wav}\t{item['greedy']}\n"


def test_cli_accepts_a_shipped_name_without_espeak(tmp_path, capsys):
    wav = tmp_path / "silence.wav"
    sf.write(wav, np.zeros(16000, dtype=np.int16), 16000, subtype="PCM_16")
    assert main(["transcribe", "--model", NAME, str(wav)]) == 0
    assert capsys.readouterr().out.startswith(f"{wav}\t")


def test_cli_unknown_model_is_one_line_error(tmp_path, capsys):
    wav = tmp_path / "silence.wav"
    sf.write(wav, np.zeros(1600, dtype=np.int16), 16000, subtype="PCM_16")
    assert main(["transcribe", "--model", "no-such-model", str(wav)]) == 1
    assert capsys.readouterr().err == "error: no-such-model: model directory not found\n"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"^unknown shipped model 'nope' "
                                           r"\(known: smarthome-crnn, smarthome-crnn-causal\)$"):
        pretrained("nope")


def test_incomplete_folder_is_a_data_error(monkeypatch, tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path)
    monkeypatch.setitem(shipped.SHIPPED, "broken", "broken")
    with pytest.raises(DataError, match=r"missing model.safetensors, cmvn.json, tokenizer.json, "
                                        r"provenance.json"):
        pretrained("broken")


def test_resolve_model_prefers_an_existing_path(tmp_path, monkeypatch):
    assert resolve_model(NAME) == str(pretrained(NAME))
    assert resolve_model("exp/none") == "exp/none"
    monkeypatch.chdir(tmp_path)
    (tmp_path / NAME).mkdir()
    assert resolve_model(NAME) == NAME


def test_cli_resolves_model_and_every_teacher():
    args = argparse.Namespace(model=NAME, teacher=[NAME, "exp/other"], data="data")
    _resolve_shipped(args)
    assert args.model == str(pretrained(NAME))
    assert args.teacher == [str(pretrained(NAME)), "exp/other"]
    assert args.data == "data"


def test_pipeline_prefers_a_stage_then_a_shipped_name_then_a_path(tmp_path):
    from slimasr.pipeline import _model_dir

    assert _model_dir(tmp_path, NAME) == pretrained(NAME)
    assert _model_dir(tmp_path, "exp/x") == Path("exp/x")
    (tmp_path / NAME).mkdir()
    assert _model_dir(tmp_path, NAME) == tmp_path / NAME


def test_evaluate_never_writes_into_the_shipped_folder(tmp_path, capsys):
    wav = tmp_path / "silence.wav"
    sf.write(wav, np.zeros(16000, dtype=np.int16), 16000, subtype="PCM_16")
    manifest = tmp_path / "data.jsonl"
    manifest.write_text(f'{{"audio_filepath": "{wav}", "duration": 1.0, "text": "turn on the light"}}\n')
    folder = pretrained(NAME)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert main(["evaluate", "--model", NAME, "--data", str(manifest), "--quiet"]) == 1
    assert capsys.readouterr().err.startswith(f"error: {folder}: is not writable (or is a model shipped")
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", NAME, "--data", str(manifest), "--json", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["num_utterances"] == 1
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
