"""Char and sentencepiece tokenizers: ids, round trips, OOV, determinism, save/load, errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimasr.errors import ConfigError, DataError
from slimasr.text import (
    CharTokenizer,
    OutOfVocabularyError,
    SentencePieceTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    normalize_text,
)

_VERBS = ["turn on", "turn off", "dim", "brighten", "open", "close", "check"]
_THINGS = ["the kitchen light", "the bedroom lamp", "the garage door", "the hall heater",
           "the office fan", "the window blinds"]  # fmt: skip
_TAILS = ["", "please", "now", "in five minutes", "at seven o'clock", "don't wait"]
# 252 normalized sentences over a-z, space and apostrophe (no j, q, x, z).
CORPUS = [" ".join(filter(None, p)) for p in itertools.product(_VERBS, _THINGS, _TAILS)]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> SentencePieceTokenizer:
    return SentencePieceTokenizer.train(CORPUS, tmp_path_factory.mktemp("bpe"), vocab_size=60)


# --- characters -------------------------------------------------------------------------------


def test_char_default_vocabulary() -> None:
    tok = CharTokenizer()
    assert tok.tokens == ["<blk>", " ", "'", *"abcdefghijklmnopqrstuvwxyz"]
    assert (tok.vocab_size, tok.blank_id, tok.kind) == (29, 0, "char")
    assert isinstance(tok, Tokenizer)


def test_char_encode_decode_exact() -> None:
    tok = CharTokenizer()
    assert tok.encode("ab c'") == [3, 4, 1, 5, 2]
    assert tok.decode([3, 4, 1, 5, 2]) == "ab c'"
    assert tok.decode([0, 3, 3, 0, 3]) == "aaa"  # blanks dropped, repeats kept
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([29])


def test_char_from_texts_is_sorted_and_deterministic() -> None:
    texts = ["cab", "ba c"]
    tok = CharTokenizer.from_texts(texts, base="")
    assert tok.tokens == ["<blk>", " ", "a", "b", "c"]
    assert CharTokenizer.from_texts(reversed(texts), base="") == tok
    assert CharTokenizer.from_texts(iter(["éa"])).tokens[-1] == "é"  # base chars + the new one
    assert CharTokenizer.from_texts(CORPUS) == CharTokenizer()


def test_char_oov_and_error_message() -> None:
    tok = CharTokenizer()
    assert tok.oov("café 1") == {"é", "1"}
    assert tok.oov("fine") == set()
    with pytest.raises(OutOfVocabularyError) as info:
        tok.encode("café 1")
    assert isinstance(info.value, DataError) and info.value.chars == {"é", "1"}
    assert str(info.value) == (
        "characters not in the tokenizer vocabulary: '1', 'é' (in 'café 1')"
    )


def test_char_rejects_bad_token_lists() -> None:
    with pytest.raises(ValueError, match="blank"):
        CharTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        CharTokenizer(["<blk>", "a", "a"])
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer(["<blk>", "ab"])


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_char_round_trip_on_normalized_text(text: str) -> None:
    tok, norm = CharTokenizer(), normalize_text(text)
    ids = tok.encode(norm)
    assert 0 not in ids and tok.decode(ids) == norm


def test_char_save_load(tmp_path: Path) -> None:
    tok = CharTokenizer.from_texts(["hello world"], base="")
    tok.save(tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == {
        "type": "char",
        "tokens": ["<blk>", " ", "d", "e", "h", "l", "o", "r", "w"],
    }
    assert load_tokenizer(tmp_path) == tok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]  # no temp files left


# --- sentencepiece ----------------------------------------------------------------------------


def test_bpe_blank_is_zero_and_round_trips(bpe: SentencePieceTokenizer) -> None:
    assert bpe.tokens[:2] == ["<blk>", "<unk>"]
    assert (bpe.vocab_size, bpe.blank_id, bpe.kind) == (60, 0, "bpe")
    assert isinstance(bpe, Tokenizer)
    for text in [*CORPUS, "the office heater please", "kitchen"]:
        ids = bpe.encode(text)
        assert ids and min(ids) >= 2  # never blank, never unk
        assert bpe.decode(ids) == text
    ids = bpe.encode("open the door")
    assert bpe.decode([0, *ids, 0]) == "open the door"  # blanks dropped


def test_bpe_oov(bpe: SentencePieceTokenizer) -> None:
    assert bpe.oov("zebra quiz") == {"z", "q"}
    assert bpe.oov("turn on the light") == set()
    with pytest.raises(OutOfVocabularyError, match="'q', 'z'"):
        bpe.encode("zebra quiz")


def test_sentencepiece_training_is_deterministic_and_writes_only_out_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    a, b = tmp_path / "a", tmp_path / "b"
    first = SentencePieceTokenizer.train(CORPUS, a, vocab_size=40, model_type="unigram")
    second = SentencePieceTokenizer.train(iter(CORPUS), b, vocab_size=40, model_type="unigram")
    assert first == second and first.tokens == second.tokens
    model = "tokenizer.model"
    assert (a / model).read_bytes() == (b / model).read_bytes()
    assert sorted(p.name for p in a.iterdir()) == ["tokenizer.json", model]
    assert list(cwd.iterdir()) == []
    assert first.kind == "unigram" and first.tokens[0] == "<blk>"
    assert all(first.decode(first.encode(t)) == t for t in CORPUS[:20])


def test_sentencepiece_save_load(bpe: SentencePieceTokenizer, tmp_path: Path) -> None:
    bpe.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, SentencePieceTokenizer)
    assert loaded == bpe and loaded.tokens == bpe.tokens
    assert loaded.encode("close the garage door now") == bpe.encode("close the garage door now")
    info = json.loads((tmp_path / "tokenizer.json").read_text())
    assert info["type"] == "bpe" and info["model_file"] == "tokenizer.model"


def test_sentencepiece_bad_files(bpe: SentencePieceTokenizer, tmp_path: Path) -> None:
    bpe.save(tmp_path)
    model = tmp_path / "tokenizer.model"
    model.write_bytes(b"not a model")
    with pytest.raises(DataError) as info:
        load_tokenizer(tmp_path)
    assert str(info.value) == f"{model}: not a valid sentencepiece model"
    model.unlink()
    with pytest.raises(DataError, match="tokenizer.model: file not found"):
        load_tokenizer(tmp_path)


# --- loading errors and the builder -----------------------------------------------------------


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected an object with a 'tokens' list"),
        ('{"type": "char"}', "expected an object with a 'tokens' list"),
        ('{"type": "words", "tokens": []}', "unknown tokenizer type 'words'"),
        ('{"type": "char", "tokens": ["a", "b"]}', "bad character tokens"),
    ],
)
def test_malformed_tokenizer_json(tmp_path: Path, content: str, problem: str) -> None:
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(DataError) as info:
        load_tokenizer(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'tokenizer.json'}: ") and problem in message
    assert "\n" not in message


def test_missing_tokenizer_json(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="tokenizer.json: file not found"):
        load_tokenizer(tmp_path)


def test_build_tokenizer(tmp_path: Path) -> None:
    char = build_tokenizer("char", CORPUS, out_dir=tmp_path / "char")
    assert char == CharTokenizer() == load_tokenizer(tmp_path / "char")
    bpe = build_tokenizer("bpe", CORPUS, vocab_size=50)
    assert isinstance(bpe, SentencePieceTokenizer) and bpe.vocab_size == 50
    with pytest.raises(ConfigError, match="unknown tokenizer kind 'wordpiece'"):
        build_tokenizer("wordpiece", CORPUS)
    with pytest.raises(ConfigError) as info:
        build_tokenizer("bpe", CORPUS[:5], vocab_size=5000)
    expected = "sentencepiece training failed: Vocabulary size too high (5000)"
    assert str(info.value).startswith(expected)
    with pytest.raises(ConfigError, match="model_type must be 'bpe' or 'unigram', got 'word'"):
        SentencePieceTokenizer.train(CORPUS, model_type="word")
