import pytest

from slimasr.decode.lm import (
    BOS,
    DISCOUNT_FALLBACK,
    EOS,
    UNK,
    _discounts,
    build_ngram_lm,
    corpus_vocabulary,
    load_ngram_lm,
    read_arpa,
    read_arpa_vocabulary,
)
from slimasr.errors import ConfigError, DataError

CORPUS = [
    "turn on the light",
    "turn off the light",
    "turn on the light",
    "open the door",
    "close the door",
    "turn on the fan",
    "open the window please",
    "lock the door now",
    "",
]


def test_hand_computed_bigram_probabilities(tmp_path):
    # Corpus "a b", "a b", "b". Continuation counts: a=1 (<s>), b=2 (<s>, a), </s>=1 (b).
    # Every count-of-counts has a zero, so both orders use the fallback (0.5, 1, 1.5).
    model = build_ngram_lm(["a b", "a b", "b"], tmp_path / "lm.arpa", order=2)
    p = lambda ctx, w: 10 ** model.log10_prob(ctx, w)  # noqa: E731
    # unigrams: (a - D) / 4 + gamma / |{a, b, </s>, <unk>}|, gamma = (0.5 + 1 + 0.5) / 4
    assert p((), "a") == pytest.approx(0.5 / 4 + 0.5 / 4)
    assert p((), "b") == pytest.approx(1 / 4 + 0.5 / 4)
    assert p((), UNK) == pytest.approx(0.5 / 4)
    assert p((), "zzz") == pytest.approx(0.5 / 4)  # unknown words score as <unk>
    # bigrams (raw counts): <s> a = 2, <s> b = 1 -> gamma(<s>) = (1 + 0.5) / 3
    assert p((BOS,), "a") == pytest.approx((2 - 1) / 3 + 0.5 * 0.25)
    assert p((BOS,), "b") == pytest.approx((1 - 0.5) / 3 + 0.5 * 0.375)
    assert p((BOS,), EOS) == pytest.approx(0.5 * 0.25)  # backs off with weight gamma(<s>)
    assert p(("a",), "b") == pytest.approx((2 - 1) / 2 + 0.5 * 0.375)
    assert p(("b",), EOS) == pytest.approx((3 - 1.5) / 3 + 0.5 * 0.25)


def test_closed_form_discounts_and_fallback():
    counts = {(str(i),): c for i, c in enumerate([1] * 10 + [2] * 5 + [3] * 3 + [4] * 2 + [9])}
    d1, d2, d3 = _discounts(counts)  # Y = 10 / (10 + 2 * 5) = 0.5
    assert (d1, d2, d3) == pytest.approx(
        (1 - 2 * 0.5 * 5 / 10, 2 - 3 * 0.5 * 3 / 5, 3 - 4 * 0.5 * 2 / 3)
    )
    assert _discounts({("a",): 1, ("b",): 2}) == DISCOUNT_FALLBACK


@pytest.mark.parametrize("order", [2, 3, 4])
def test_probabilities_sum_to_one_in_every_context(tmp_path, order):
    path = tmp_path / "lm.arpa"
    build_ngram_lm(CORPUS, path, order=order)
    model = read_arpa(path)  # through the file: 7-digit log10 values
    assert model.order == order
    events = [*sorted(model.vocabulary), EOS, UNK]
    contexts = [()] + [g for table in model.ngrams[:-1] for g in table if g[-1] != EOS]
    contexts += [("zzz",), ("the", "zzz"), ("zzz", "the")]  # unseen contexts back off fully
    for context in contexts:
        total = sum(10 ** model.log10_prob(context, w) for w in events)
        assert total == pytest.approx(1.0, abs=1e-5), context


def test_arpa_file_layout_and_vocabulary(tmp_path):
    path = tmp_path / "lm.arpa"
    build_ngram_lm(CORPUS, path, order=3)
    text = path.read_text()
    assert text.startswith("\\data\\\nngram 1=") and text.rstrip().endswith("\\end\\")
    assert "-99.0000000\t<s>\t" in text
    expected = set(corpus_vocabulary(CORPUS))
    assert read_arpa_vocabulary(path) == expected == read_arpa(path).vocabulary
    assert corpus_vocabulary(["b a", "a  c"]) == ["a", "b", "c"]
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, nothing left behind


def test_kenlm_reads_the_arpa_and_agrees(tmp_path):
    kenlm = pytest.importorskip("kenlm")
    path = tmp_path / "lm.arpa"
    ours = build_ngram_lm(CORPUS, path, order=3)
    theirs = kenlm.Model(str(path))
    for sentence in [*CORPUS[:-1], "the light door", "open zzz the", "the"]:
        assert ours.sentence_log10(sentence.split()) == pytest.approx(
            theirs.score(sentence), abs=1e-5
        )
    wrapped = load_ngram_lm(path, backend="kenlm")
    assert wrapped.vocabulary == ours.vocabulary and wrapped.order == 3
    logp, _ = wrapped.score(wrapped.begin_state(), "turn")
    assert logp == pytest.approx(ours.score(ours.begin_state(), "turn")[0], abs=1e-6)


def test_python_backend_states_follow_kenlm_semantics(tmp_path):
    path = tmp_path / "lm.arpa"
    build_ngram_lm(CORPUS, path, order=3)
    model = load_ngram_lm(path, backend="python")
    state = model.begin_state()
    total = 0.0
    for word in ["turn", "on", "the", "light", EOS]:
        logp, state = model.score(state, word)
        total += logp
    assert state == ("light", EOS)
    assert total == pytest.approx(model.sentence_log10("turn on the light".split()))
    assert model.null_state() == ()


def test_bad_files_give_one_line_errors(tmp_path):
    missing = tmp_path / "nope.arpa"
    with pytest.raises(DataError, match="nope.arpa: language model file not found"):
        load_ngram_lm(missing)
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0\ta\n\n\\end\\\n")
    with pytest.raises(DataError, match="header says 2 1-grams, found 1"):
        read_arpa(bad)
    bad.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0\ta\n")
    with pytest.raises(DataError, match="not a complete ARPA file"):
        read_arpa(bad)
    with pytest.raises(ValueError, match="order must be >= 2"):
        build_ngram_lm(CORPUS, tmp_path / "x.arpa", order=1)


@pytest.mark.parametrize("order, texts, message", [
    (1, ["a b"], r"n-gram order must be >= 2 and <= 6 \(KenLM's limit\), got 1"),
    (7, ["a b"], r"n-gram order must be >= 2 and <= 6 \(KenLM's limit\), got 7"),
    (5, ["a b", "b"], r"n-gram order 5: no sentence is long enough \(with <s> and </s> the longest "
                      r"gives 4-grams\); use order 4 or less"),
])
def test_orders_the_estimator_cannot_build_are_config_errors(tmp_path, order, texts, message):
    with pytest.raises(ConfigError, match=message):
        build_ngram_lm(texts, tmp_path / "x.arpa", order=order)
    with pytest.raises(DataError, match="no words to build a language model from"):
        build_ngram_lm(["", " "], tmp_path / "x.arpa", order=2)
    assert not list(tmp_path.iterdir())


def test_binary_lm_without_kenlm_says_how_to_install(tmp_path, monkeypatch):
    import slimasr.decode.lm as lm_module

    monkeypatch.setattr(lm_module, "kenlm_available", lambda: False)
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\x00")
    with pytest.raises(
        DataError, match=r'lm.bin: .*needs the kenlm module: pip install "slimasr\[lm\]"'
    ):
        load_ngram_lm(binary)
