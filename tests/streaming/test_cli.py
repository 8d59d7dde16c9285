"""slimasr transcribe --stream: partial text as it changes, the final text at the end; files, the
microphone (with sounddevice), one-line errors otherwise."""

from __future__ import annotations

import io
import sys
import types

import numpy as np
import pytest

from slimasr.cli import main
from slimasr.data.audio import load_audio
from slimasr.recognize import Recognizer
from slimasr.streaming.console import PartialPrinter
from tests.streaming.helpers import dev_audio


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_stream_prints_each_changed_partial_then_the_final_text(causal, capsys):
    paths = dev_audio(causal)[1:3]  # two and three words
    assert main(["transcribe", "--model", str(causal), "--stream", "--chunk-ms", "80", *map(str, paths)]) == 0
    lines = capsys.readouterr().out.splitlines()
    offline = Recognizer(causal)
    finals = [line for line in lines if not line.startswith("partial: ")]
    assert finals == [f"{p}\t{offline.transcribe(load_audio(p))}" for p in paths]
    first = lines[:lines.index(finals[0])]
    texts = [line.removeprefix("partial: ") for line in first]
    assert len(texts) > 2 and len(set(texts)) == len(texts)  # printed only when it changes
    assert all(finals[0].split("\t")[1].startswith(t) for t in texts)


def test_a_bundle_streams_on_onnxruntime(causal, causal_bundle, capsys):
    path = dev_audio(causal)[0]
    assert main(["transcribe", "--model", str(causal_bundle), "--stream", str(path)]) == 0
    final = capsys.readouterr().out.splitlines()[-1]
    assert final == f"{path}\t{Recognizer(causal).transcribe(load_audio(path))}"


def test_on_a_terminal_the_partial_rewrites_one_line():
    out = io.StringIO()
    printer = PartialPrinter(out, tty=True)
    for text in ["", "l", "la", "la", "lamp"]:
        printer.partial(text)
    printer.final("a.wav", "lamp")
    assert out.getvalue() == "\r\033[Kl\r\033[Kla\r\033[Klamp\r\033[Ka.wav\tlamp\n"


def test_mic_streams_the_microphone_until_ctrl_c(causal, capsys, monkeypatch):
    """A stand-in sounddevice: its input stream plays a dev file, then the user presses Ctrl-C."""
    audio = load_audio(dev_audio(causal)[0])

    class InputStream:
        def __init__(self, samplerate, channels, dtype, blocksize):
            assert (samplerate, channels, dtype) == (16000, 1, "float32")
            self.position = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, frames):
            if self.position >= len(audio):
                raise KeyboardInterrupt
            block = audio[self.position:self.position + frames]
            self.position += frames
            return block[:, None].astype(np.float32), False

    monkeypatch.setitem(sys.modules, "sounddevice", types.SimpleNamespace(InputStream=InputStream))
    assert main(["transcribe", "--model", str(causal), "--mic"]) == 0
    final = capsys.readouterr().out.splitlines()[-1]
    assert final == f"mic\t{Recognizer(causal).transcribe(audio)}"


def test_mic_without_sounddevice_is_one_line(causal, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import sounddevice -> ImportError
    assert main(["transcribe", "--model", str(causal), "--mic"]) == 1
    assert one_line_error(capsys) == "error: --mic needs the sounddevice package: pip install 'slimasr[mic]'"


@pytest.mark.parametrize(("args", "message"), [
    (["--stream", "--lm", "lm.arpa", "a.wav"], "--lm: streaming decodes greedily"),
    (["--stream"], "transcribe --stream needs audio files, or --mic"),
    (["--chunk-ms", "80", "a.wav"], "--chunk-ms needs --stream"),
    (["--stream", "--chunk-ms", "0", "a.wav"], "--chunk-ms must be positive, got 0"),
])
def test_bad_streaming_options_are_one_line(causal, capsys, args, message):
    assert main(["transcribe", "--model", str(causal), *args]) == 1
    assert message in one_line_error(capsys)


def test_a_model_that_cannot_stream_is_one_line(bidirectional, causal, capsys):
    assert main(["transcribe", "--model", str(bidirectional), "--stream", str(dev_audio(causal)[0])]) == 1
    assert one_line_error(capsys).startswith(
        f"error: {bidirectional / 'config.json'}: cannot stream this model: its backward recurrent")
