"""``slimasr transcribe --stream``: stream audio files or the microphone through a causal model,
showing the partial text as it changes and the final text at the end.

On a terminal the partial text rewrites one line in place; otherwise (a pipe, a file) each
changed partial is a line ``partial: TEXT``. The final text is ``LABEL<TAB>TEXT``, as offline
``transcribe`` prints it (the label is the file, or ``mic``).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Iterator, Sequence, TextIO

import numpy as np

from slimasr.errors import ConfigError
from slimasr.streaming.stream import DEFAULT_CHUNK_MS

MIC_LABEL = "mic"  # the final line's label for microphone input


class PartialPrinter:
    """Shows a stream's text as it changes (see module doc)."""

    def __init__(self, out: TextIO | None = None, tty: bool | None = None):
        self.out = sys.stdout if out is None else out
        self.tty = self.out.isatty() if tty is None else tty
        self.shown = ""

    def partial(self, text: str) -> None:
        if text == self.shown:
            return
        self.shown = text
        if self.tty:  # rewrite the line; keep the end of a text wider than the terminal
            width = max(1, shutil.get_terminal_size().columns - 1)
            self.out.write("\r\033[K" + text[-width:])
            self.out.flush()
        else:
            print(f"partial: {text}", file=self.out, flush=True)

    def final(self, label: str, text: str) -> None:
        if self.tty:
            self.out.write("\r\033[K")
        print(f"{label}\t{text}", file=self.out, flush=True)
        self.shown = ""


def transcribe_stream(model: str | Path, audio: Sequence[str], chunk_ms: float | None = None,
                      mic: bool = False, lm: str | None = None, out: TextIO | None = None) -> None:
    """Stream each file of ``audio`` (then, with ``mic``, the microphone until Ctrl-C) through the
    model directory or bundle ``model``, in chunks of ``chunk_ms``; text to ``out`` (stdout)."""
    from slimasr.streaming.recognizer import load_streaming_recognizer

    if lm is not None:
        raise ConfigError("--lm: streaming decodes greedily; beam search with an LM runs offline "
                          "(drop --stream)")
    if not audio and not mic:
        raise ConfigError("transcribe --stream needs audio files, or --mic")
    if mic:
        import_sounddevice()  # before loading the model: fail fast without it
    recognizer = load_streaming_recognizer(model, DEFAULT_CHUNK_MS if chunk_ms is None else chunk_ms)
    printer = PartialPrinter(out)
    for path in audio:
        stream_file(recognizer, path, printer)
    if mic:
        stream_microphone(recognizer, printer)


def stream_file(recognizer, path: str | Path, printer: PartialPrinter) -> str:
    """Feed one file in ``recognizer.chunk_ms`` pieces, as if it arrived in real time."""
    from slimasr.data.audio import load_audio

    audio = load_audio(path, recognizer.sampling_rate)
    stream = recognizer.stream()
    piece = max(1, round(recognizer.chunk_ms / 1000.0 * recognizer.sampling_rate))
    for start in range(0, len(audio), piece):
        printer.partial(stream.accept(audio[start:start + piece]))
    text = stream.finish()
    printer.final(str(path), text)
    return text


def stream_microphone(recognizer, printer: PartialPrinter, blocks: Iterator[np.ndarray] | None = None) -> str:
    """Stream the microphone (or ``blocks``) until Ctrl-C; then the final text."""
    if blocks is None:
        blocks = microphone_blocks(recognizer.sampling_rate, recognizer.chunk_ms)
    stream = recognizer.stream()
    print("listening: speak, then press Ctrl-C", file=sys.stderr, flush=True)
    try:
        for block in blocks:
            printer.partial(stream.accept(block))
    except KeyboardInterrupt:
        pass
    text = stream.finish()
    printer.final(MIC_LABEL, text)
    return text


def microphone_blocks(sampling_rate: int, chunk_ms: float) -> Iterator[np.ndarray]:
    """Mono float32 blocks of ``chunk_ms`` from the default input device, forever."""
    sounddevice = import_sounddevice()
    size = max(1, round(chunk_ms / 1000.0 * sampling_rate))
    with sounddevice.InputStream(samplerate=sampling_rate, channels=1, dtype="float32",
                                 blocksize=size) as mic:
        while True:
            block, _overflowed = mic.read(size)
            yield np.asarray(block, dtype=np.float32)[:, 0].copy()


def import_sounddevice():
    """The ``sounddevice`` module, or a one-line ConfigError saying how to get it."""
    try:
        import sounddevice
    except ImportError:
        raise ConfigError("--mic needs the sounddevice package: pip install 'slimasr[mic]'") from None
    except OSError as e:  # the package is there, the PortAudio library it loads is not
        raise ConfigError(f"--mic: sounddevice cannot load PortAudio ({' '.join(str(e).split())}); "
                          "install it, e.g. apt install libportaudio2") from None
    return sounddevice
