"""bench/real_speech/build.py on a tiny fake package tree (the Debian packages are not needed)."""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# A dev dependency (pyproject): skipped without it on a developer's machine, never in CI.
G722 = importlib.import_module("G722") if os.environ.get("CI") else pytest.importorskip("G722")

_SCRIPT = Path(__file__).parents[2] / "bench" / "real_speech" / "build.py"
_spec = importlib.util.spec_from_file_location("real_speech_build", _SCRIPT)
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

TRANSCRIPTS = """; Core Asterisk Sounds in English

agent-pass: Please enter your password followed by the pound key.
beep: [this is a simple beep tone]
digits/7: seven
dictate/both_help: press * to toggle pause, press # to enter a new filename
demo-echotest: dial 500 for the echo test
gone: this prompt has no audio
"""


def fake_tree(root: Path) -> Path:
    """The packages' two paths: G.722 prompts (0.5 s tones) and the gzipped transcripts."""
    sounds = root / build.SOUNDS
    for name in ("agent-pass", "beep", "digits/7", "dictate/both_help", "demo-echotest", "extra"):
        (sounds / name).parent.mkdir(parents=True, exist_ok=True)
        tone = (8000 * np.sin(np.arange(8000) * 0.2)).astype(np.int16)
        encoder = G722.G722(build.SAMPLE_RATE, build.BIT_RATE)
        (sounds / f"{name}.g722").write_bytes(bytes(encoder.encode(tone)))
    doc = root / build.TRANSCRIPTS
    doc.parent.mkdir(parents=True)
    doc.write_bytes(gzip.compress(TRANSCRIPTS.encode()))
    changelog = root / "usr/share/doc/asterisk-core-sounds-en-g722/changelog.Debian.gz"
    changelog.parent.mkdir(parents=True)
    changelog.write_bytes(gzip.compress(b"asterisk-core-sounds-en-g722 (1.6.1-1) unstable; urgency=low\n"))
    return root


@pytest.mark.parametrize("text, expected", [
    ("Please press 1 or # now.", ("please press one or pound now", None)),
    ("press * to toggle", ("press star to toggle", None)),
    ("at [@]", ("at", None)),
    ("3D audio enabled", ("three d audio enabled", None)),
    ("Press 42, you'd say.", ("press forty two you'd say", None)),
    ("Call-Forward on Busy.", ("call forward on busy", None)),
    ("(10 seconds of silence)", ("", "no speech in the transcript")),
    ("<beep ascending>", ("", "no speech in the transcript")),
    ("dial 1234 now", ("", "number read in an unknown way")),
    ("a 28.8 kilobit modem", ("", "number read in an unknown way")),
])  # fmt: skip
def test_normalize(text: str, expected: tuple[str, str | None]) -> None:
    assert build.normalize(text) == expected


def test_build_writes_sorted_manifest_wavs_and_what_was_left_out(tmp_path: Path, capsys) -> None:
    root = fake_tree(tmp_path / "root")
    assert build.main([str(tmp_path / "out"), "--root", str(root)]) == 0
    out = tmp_path / "out"
    lines = [json.loads(line) for line in (out / "real_speech.jsonl").read_text().splitlines()]
    assert [(e["audio_filepath"], e["text"]) for e in lines] == [
        ("audio/agent-pass.wav", "please enter your password followed by the pound key"),
        ("audio/dictate/both_help.wav", "press star to toggle pause press pound to enter a new filename"),
        ("audio/digits/7.wav", "seven"),
    ]  # fmt: skip
    for entry in lines:
        audio, rate = sf.read(out / entry["audio_filepath"], dtype="int16")
        assert rate == 16000 and len(audio) == 8000 and entry["duration"] == 0.5
        assert sf.info(out / entry["audio_filepath"]).subtype == "PCM_16"
        assert np.abs(audio.astype(np.int32)).max() > 4000  # the tone survived the codec
    summary = json.loads((out / "build.json").read_text())
    assert summary["utterances"] == 3 and summary["minutes"] == 0.03 and summary["words"] == 22
    assert summary["left_out"] == {"no audio file": ["gone"], "no transcript": ["extra"],
                                   "no speech in the transcript": ["beep"],
                                   "number read in an unknown way": ["demo-echotest"]}  # fmt: skip
    assert summary["packages"] == {"asterisk-core-sounds-en": "unknown",
                                   "asterisk-core-sounds-en-g722": "1.6.1-1"}  # fmt: skip
    assert capsys.readouterr().out.startswith("3 utterances, 0.03 minutes, 22 words in ")


def test_build_is_reproducible_and_imports(tmp_path: Path) -> None:
    from slimasr.data.importers import import_jsonl

    root = fake_tree(tmp_path / "root")
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert build.main([str(out), "--root", str(root)]) == 0
    files = [sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) for out in outs]
    assert files[0] == files[1] and len(files[0]) == 5
    for name in files[0]:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    summary = import_jsonl(outs[0] / "real_speech.jsonl", tmp_path / "data", split="test",
                           show_progress=False)  # fmt: skip
    assert summary["splits"]["test"]["num_cuts"] == 3 and summary["skipped"] == {}


def test_refusals_are_one_line(tmp_path: Path, capsys) -> None:
    assert build.main([str(tmp_path / "out"), "--root", str(tmp_path / "nothing")]) == 1
    assert capsys.readouterr().err == (f"error: {tmp_path / 'nothing' / build.SOUNDS}: not found "
                                       "(apt-get install asterisk-core-sounds-en "
                                       "asterisk-core-sounds-en-g722, or pass --root)\n")  # fmt: skip
    root = fake_tree(tmp_path / "root")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert build.main([str(tmp_path / "full"), "--root", str(root)]) == 1
    assert "exists and is not empty (pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "out").exists()
