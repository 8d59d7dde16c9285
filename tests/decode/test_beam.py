import math
import random

import pytest
import torch

import pyctcdecode  # noqa: F401  (a core dependency: its absence must fail, not skip)

import slimasr.decode.lm as lm_module  # noqa: E402
from slimasr.decode import (  # noqa: E402
    BeamConfig,
    DecodeConfig,
    build_ngram_lm,
    ids_to_text,
    make_decoder,
)
from slimasr.decode.beam import BeamSearchDecoder, pyctcdecode_labels  # noqa: E402
from slimasr.decode.greedy import GreedyDecoder, greedy_decode  # noqa: E402

TOKENS = ["<blk>", " ", "c", "d", "e", "h", "l", "n", "o", "p", "r", "s", "t"]
TEXTS = ["open the door", "close the door", "open the shop", "close the shop"]
PEAK = 0.97  # probability of the intended token in a "clear" frame


def posteriors(frames: list, tokens: list[str] = TOKENS) -> torch.Tensor:
    """(1, T, V) log-probs. A frame is a token ("_" = blank), clear with probability PEAK, or a
    dict token -> probability; the rest of the mass is spread evenly over the other tokens."""
    rows = []
    for frame in frames:
        probs = {frame: PEAK} if isinstance(frame, str) else frame
        rest = (1 - sum(probs.values())) / (len(tokens) - len(probs))
        row = [rest] * len(tokens)
        for token, p in probs.items():
            row[0 if token == "_" else tokens.index(token)] = p
        rows.append([math.log(p) for p in row])
    return torch.tensor(rows).unsqueeze(0)


# "open the dor": the second "o" of "door" is only 40% separated by a blank, so the best path
# (and the best prefix without a language model) merges the two o's.
NEAR_MISS = posteriors([*"open the do", {"o": 0.58, "_": 0.4}, *"or_"])
NEAR_MISS_LENS = torch.tensor([NEAR_MISS.shape[1]])


def test_labels_for_characters_and_pieces():
    assert pyctcdecode_labels(["<blk>", " ", "a", "<unk>"]) == ["", " ", "a", "⁇"]
    assert pyctcdecode_labels(["<blk>", "|", "a"], word_sep="|") == ["", " ", "a"]
    pieces = ["<blk>", "<unk>", "▁the", "re", "▁"]
    assert pyctcdecode_labels(pieces, word_sep="▁") == ["", "▁⁇▁", "▁the", "re", "▁"]


def test_beam_agrees_with_greedy_on_peaky_posteriors():
    rng = random.Random(0)
    beam, greedy = BeamSearchDecoder(TOKENS), GreedyDecoder(TOKENS)
    for _ in range(10):
        frames = [rng.choice(["_", *TOKENS[1:]]) for _ in range(rng.randint(1, 25))]
        log_probs = posteriors(frames)
        lens = torch.tensor([len(frames)])
        assert beam.decode_batch(log_probs, lens) == greedy.decode_batch(log_probs, lens)


def test_beam_agrees_with_greedy_on_word_pieces():
    pieces = ["<blk>", "<unk>", "▁open", "▁the", "▁do", "or", "s"]
    log_probs = posteriors(["▁open", "_", "▁the", "▁do", "or", "or", "_", "s"], pieces)
    lens = torch.tensor([8])
    expected = ids_to_text(greedy_decode(log_probs, lens)[0], pieces, "▁")
    assert expected == "open the doors"
    assert BeamSearchDecoder(pieces, word_sep="▁").decode_batch(log_probs, lens) == [expected]


def test_batch_respects_lengths_and_empty_utterances():
    batch = torch.cat([NEAR_MISS, NEAR_MISS])
    texts = BeamSearchDecoder(TOKENS).decode_batch(batch, torch.tensor([4, 0]))
    assert texts == ["open", ""]


@pytest.mark.parametrize("backend", ["python", "kenlm"])
def test_language_model_fixes_a_near_miss(tmp_path, monkeypatch, backend):
    if backend == "kenlm":
        pytest.importorskip("kenlm")
    else:
        monkeypatch.setattr(lm_module, "kenlm_available", lambda: False)
    lm_path = tmp_path / "lm.arpa"
    build_ngram_lm(TEXTS, lm_path, order=3)
    assert GreedyDecoder(TOKENS).decode_batch(NEAR_MISS, NEAR_MISS_LENS) == ["open the dor"]
    assert BeamSearchDecoder(TOKENS).decode_batch(NEAR_MISS, NEAR_MISS_LENS) == ["open the dor"]
    with_lm = BeamSearchDecoder(TOKENS, lm_path=lm_path)
    assert with_lm.decode_batch(NEAR_MISS, NEAR_MISS_LENS) == ["open the door"]
    # with an LM but alpha = 0 and no OOV penalty, the acoustics win again
    neutral = BeamConfig(alpha=0.0, unk_score_offset=0.0)
    assert BeamSearchDecoder(TOKENS, lm_path=lm_path, config=neutral).decode_batch(
        NEAR_MISS, NEAR_MISS_LENS
    ) == ["open the dor"]


def test_lexicon_without_lm_snaps_to_known_words():
    config = DecodeConfig(method="beam")
    decoder = make_decoder(TOKENS, config, lexicon=["open", "the", "door", "close"])
    assert decoder.decode_batch(NEAR_MISS, NEAR_MISS_LENS) == ["open the door"]
    config.use_lexicon = False
    decoder = make_decoder(TOKENS, config, lexicon=["open", "the", "door", "close"])
    assert decoder.decode_batch(NEAR_MISS, NEAR_MISS_LENS) == ["open the dor"]


def test_missing_pyctcdecode_says_how_to_install(monkeypatch):
    import importlib
    import sys

    from slimasr.errors import SlimasrError

    monkeypatch.delitem(sys.modules, "slimasr.decode.beam")
    for name in [m for m in sys.modules if m.startswith("pyctcdecode")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "pyctcdecode", None)
    with pytest.raises(
        SlimasrError, match=r'needs the pyctcdecode package: pip install "slimasr\[lm\]"'
    ):
        importlib.import_module("slimasr.decode.beam")


BEAM_WITH_ARPA = """
import logging, sys
sys.modules["kenlm"] = None  # as on a machine without the optional kenlm module
logging.basicConfig(level=logging.INFO, format="%(message)s")  # as the slimasr command does
import torch
from slimasr.decode import DecodeConfig, build_ngram_lm, make_decoder
tokens, lm = sys.argv[1].split(","), sys.argv[2]
build_ngram_lm(["open the door", "close the door"], lm, order=2)
decoder = make_decoder(tokens, DecodeConfig(method="beam", lm_path=lm))
ids = [tokens.index(c) for c in "open"]
log_probs = torch.full((1, 4, len(tokens)), -20.0)
log_probs[0, torch.arange(4), ids] = 0.0
print(decoder.decode_batch(log_probs, torch.tensor([4]))[0])
"""


def test_beam_search_with_an_arpa_lm_prints_nothing_about_kenlm(tmp_path):
    """pyctcdecode warns at import that kenlm is missing and points to a URL; ARPA needs no kenlm."""
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", BEAM_WITH_ARPA, ",".join(TOKENS), str(tmp_path / "lm.arpa")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "open\n"
    assert out.stderr == ""
