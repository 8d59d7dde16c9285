"""The deployment bundle: a folder that an ONNX runtime needs and nothing else.

    BUNDLE/model.onnx        fp32 graph: x (N, T, F) float32 raw log-mel fbank, x_lens (N,) int64
                             -> log_probs (N, T', V) float32 log-softmax, log_probs_len (N,) int64
    BUNDLE/model.int8.onnx   the same graph, dynamically quantized (``slimasr export --int8``)
    BUNDLE/model.streaming.onnx, model.streaming.int8.onnx
                             causal models only: one chunk and the state in, the chunk's log-probs
                             and the new state out (``slimasr.runtime.streaming``)
    BUNDLE/tokens.txt        ``symbol id`` per line, ``<blk> 0`` first (sherpa-onnx's format)
    BUNDLE/tokenizer.model   the sentencepiece model (bpe/unigram vocabularies only): what
                             ``evaluate`` encodes references with to apply its exclusion rules
    BUNDLE/bundle.json       vocabulary, feature config, measured results (``read_bundle``);
                             written last, so its presence means the bundle is complete

Global CMVN is inside the graph, so a runtime feeds raw fbank. ``docs/export.md`` documents every
key. This module knows nothing of training: it reads what ``slimasr.export`` wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from slimasr.data.features import FeatureConfig
from slimasr.errors import DataError
from slimasr.io import read_json
from slimasr.text import CharTokenizer, NormalizerConfig, SentencePieceTokenizer, Tokenizer

BUNDLE_FILE = "bundle.json"
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
TOKENS_FILE = "tokens.txt"
TOKENIZER_MODEL = "tokenizer.model"  # sentencepiece vocabularies only
STREAMING_FILE = "model.streaming.onnx"  # causal models only: the streaming graph (runtime/streaming.py)
STREAMING_INT8_FILE = "model.streaming.int8.onnx"  # the streaming graph quantized (causal models, --int8)
# Every file a bundle consists of (``slimasr export`` writes these and nothing else)
BUNDLE_NAMES = (MODEL_FILE, INT8_FILE, STREAMING_FILE, STREAMING_INT8_FILE, TOKENS_FILE, TOKENIZER_MODEL,
                BUNDLE_FILE)
BUNDLE_FORMAT = "slimasr-bundle"  # value of bundle.json's "format"
BUNDLE_VERSION = 1  # bump when bundle.json's layout changes
INPUT_NAMES = ("x", "x_lens")  # what sherpa-onnx's offline CTC path feeds, by position
OUTPUT_NAMES = ("log_probs", "log_probs_len")
SPACE_SYMBOL = "\u2581"  # "▁": how tokens.txt spells a character vocabulary's space (sherpa maps it back)


@dataclass
class Bundle:
    """What a runtime reads from ``bundle.json``."""

    path: Path  # the bundle folder
    tokens: list[str]  # the model's output units; tokens[0] is the blank
    kind: str  # the tokenizer's kind: "char", "bpe" or "unigram"
    word_separator: str  # " " (characters) or "▁" (sentencepiece pieces)
    features: FeatureConfig  # how audio becomes the graph's input x
    normalizer: NormalizerConfig  # transcript cleanup before scoring
    subsampling: int  # T / T'
    int8: bool  # model.int8.onnx is present and passed the export's WER gate
    info: dict[str, Any]  # the whole bundle.json (measured results included)

    def model_path(self, int8: bool = False) -> Path:
        if int8 and not self.int8:
            raise DataError(self.path, f"has no {INT8_FILE} (export it with --int8)")
        return self.path / (INT8_FILE if int8 else MODEL_FILE)

    def tokenizer(self) -> Tokenizer | None:
        """The model's tokenizer, rebuilt from the bundle: characters from ``tokens``, pieces from
        tokenizer.model; None for a sentencepiece bundle without that file."""
        where = self.path / BUNDLE_FILE
        if self.kind == "char":
            try:
                return CharTokenizer(self.tokens)
            except ValueError as e:
                raise DataError(where, f"bad character vocabulary ({e})") from None
        name = self.info["files"].get("tokenizer_model")
        if not name:
            return None
        try:
            tokenizer = SentencePieceTokenizer((self.path / name).read_bytes(), self.kind)
        except (OSError, RuntimeError, ValueError) as e:
            raise DataError(self.path / name, f"not a usable sentencepiece model ({e})") from None
        if tokenizer.tokens != self.tokens:
            raise DataError(self.path / name, f"its pieces differ from {BUNDLE_FILE}'s vocabulary")
        return tokenizer


def bundle_graph(path: str | Path) -> tuple[Path, bool]:
    """``(bundle folder, int8)`` for a bundle folder (its fp32 graph) or one of its .onnx files."""
    path = Path(path)
    if path.suffix != ".onnx":
        return path, False
    if path.name not in (MODEL_FILE, INT8_FILE):
        raise DataError(path, f"not a bundle graph (a bundle runs {MODEL_FILE} or {INT8_FILE})")
    return path.parent, path.name == INT8_FILE


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a bundle folder (it holds bundle.json) or a .onnx file inside one."""
    path = Path(path)
    if path.suffix == ".onnx":
        path = path.parent
    return (path / BUNDLE_FILE).is_file()


def read_bundle(path: str | Path) -> Bundle:
    """Read and check ``path/bundle.json``; any problem is a one-line DataError naming the file."""
    path = Path(path)
    info = read_json(path / BUNDLE_FILE)
    where = path / BUNDLE_FILE
    if not isinstance(info, dict) or info.get("format") != BUNDLE_FORMAT:
        raise DataError(where, f"not a slimasr bundle (format is not {BUNDLE_FORMAT!r})")
    if info.get("format_version") != BUNDLE_VERSION:
        raise DataError(where, f"unsupported format_version {info.get('format_version')!r} "
                               f"(this slimasr reads {BUNDLE_VERSION})")
    try:
        vocab = info["vocabulary"]
        bundle = Bundle(path, list(vocab["tokens"]), str(vocab.get("kind", "char")),
                        str(vocab["word_separator"]),
                        FeatureConfig(**info["features"]), NormalizerConfig(**info["normalizer"]),
                        int(info["subsampling_factor"]), bool(info["files"].get("model_int8")), info)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise DataError(where, f"malformed bundle.json ({type(e).__name__}: {e})") from None
    needed = [MODEL_FILE, INT8_FILE if bundle.int8 else None, info["files"].get("tokenizer_model")]
    for name in filter(None, needed):
        if not (path / name).is_file():
            raise DataError(path / name, "file not found (the bundle is incomplete)")
    return bundle


def tokens_txt(tokens: Sequence[str]) -> str:
    """tokens.txt text: ``symbol id`` per line; a space token is written ``▁`` (sherpa-onnx reads
    a line without a symbol as a space too, but other readers do not)."""
    symbols = [SPACE_SYMBOL if t == " " else t for t in tokens]
    return "".join(f"{s} {i}\n" for i, s in enumerate(symbols))
