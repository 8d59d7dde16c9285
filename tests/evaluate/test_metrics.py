import pytest

from slimasr.evaluate.metrics import ErrorRateStats, intent_metrics, score_utterance


def plain() -> ErrorRateStats:
    return ErrorRateStats(normalize=str.lower)


def test_hand_made_corpus_exact_numbers():
    stats = plain()
    stats.append(
        ["u1", "u2", "u3"],
        hyps=["turn on the lite", "open door", "lock the door"],
        refs=["turn on the light", "open the door", "Lock the door"],
    )
    # u1: 1 substitution (4 words); u2: 1 deletion (3 words); u3: exact after lowercasing
    out = stats.summarize()
    assert out["num_utterances"] == 3
    assert (out["substitutions"], out["deletions"], out["insertions"], out["hits"]) == (1, 1, 0, 8)
    assert out["num_ref_words"] == 10 and out["num_hyp_words"] == 9
    assert out["wer"] == pytest.approx(20.0)
    assert out["sentence_accuracy"] == pytest.approx(100 / 3)
    assert out["word_precision"] == pytest.approx(800 / 9)
    assert out["word_recall"] == pytest.approx(80.0)
    p, r = 800 / 9, 80.0
    assert out["word_f1"] == pytest.approx(2 * p * r / (p + r))
    # characters: "lite" -> "light" = 3 edits (li[t->g][e->h]+t), "open door" -> "open the
    # door" = 4 ("the ")
    assert out["char_errors"] == 7
    assert out["num_ref_chars"] == len("turn on the light") + len("open the door") + len(
        "lock the door"
    )
    assert out["cer"] == pytest.approx(100 * 7 / out["num_ref_chars"])
    assert "intent_accuracy" not in out
    # first words: turn / open / lock all right; last words: lite (wrong), door, door
    assert out["first_word_accuracy"] == 100.0
    assert out["last_word_accuracy"] == pytest.approx(200 / 3)


def test_insertions_count_and_wer_can_exceed_100():
    stats = plain()
    stats.append(["a"], hyps=["on on on"], refs=["on"])
    out = stats.summarize()
    assert (out["hits"], out["insertions"]) == (1, 2)
    assert out["wer"] == pytest.approx(200.0)
    assert out["word_precision"] == pytest.approx(100 / 3) and out["word_recall"] == 100.0


def test_empty_hypothesis_and_empty_reference():
    stats = plain()
    stats.append(["e1", "e2", "e3"], hyps=["", "hello there", ""], refs=["hi you", "", "  "])
    (first,) = stats.scores  # empty references are not scored
    assert (first.deletions, first.errors, first.ref_words) == (2, 2, 2)
    out = stats.summarize()
    assert out["num_utterances"] == 1 and out["excluded"] == {"empty_reference": 2}
    assert out["wer"] == pytest.approx(100.0)  # 2 deletions over 2 reference words
    assert out["sentence_accuracy"] == 0.0  # an empty reference is never a correct sentence
    assert out["word_precision"] == 0.0 and out["word_recall"] == 0.0 and out["word_f1"] == 0.0
    assert out["first_word_accuracy"] == 0.0 and out["last_word_accuracy"] == 0.0  # nothing heard
    assert [u["id"] for u in stats.utterances()] == ["e1"]
    # score_utterance itself still aligns an empty reference: insertions are errors
    second = score_utterance("e2", "hello there", "")
    assert (second.insertions, second.errors, second.ref_words) == (2, 2, 0)


def test_only_empty_references_and_empty_corpus():
    stats = plain()
    stats.append(["x", "y"], hyps=["", "oops"], refs=["", ""])
    out = stats.summarize()
    assert out["num_utterances"] == 0 and out["excluded"] == {"empty_reference": 2}
    assert (out["wer"], out["cer"], out["sentence_accuracy"]) == (0.0, 0.0, 0.0)
    stats.exclude("bad_audio", 3)  # a caller's own reason
    assert stats.summarize()["excluded"] == {"bad_audio": 3, "empty_reference": 2}
    empty = plain().summarize()
    assert empty["num_utterances"] == 0 and empty["wer"] == 0.0 and empty["excluded"] == {}
    assert empty["sentence_accuracy"] == 0.0


def test_default_normalization_is_applied_to_both_sides():
    stats = ErrorRateStats()  # slimasr.text.normalize_text
    stats.append(["n"], hyps=["it's 7 o'clock"], refs=["It's seven O'Clock!"])
    assert stats.summarize()["wer"] == 0.0
    assert stats.scores[0].ref == "it's seven o'clock"


def test_worst_utterances_sorted_by_errors():
    stats = plain()
    stats.append(
        ["a", "b", "c", "d"],
        hyps=["x y", "one", "p q r", "same"],
        refs=["a b", "one", "s t", "same"],
    )
    worst = stats.worst(2)
    assert [w["id"] for w in worst] == ["c", "a"]  # 3 errors, then 2
    assert worst[0] == {"id": "c", "ref": "s t", "hyp": "p q r", "errors": 3, "wer": 150.0}
    assert [w["id"] for w in stats.worst(10)] == ["c", "a"]  # correct utterances are not listed
    assert stats.utterances()[1]["errors"] == 0


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="differ in length"):
        plain().append(["a"], ["x", "y"], ["z"])


def test_score_utterance_collapses_whitespace():
    score = score_utterance("u", "  a   b ", "a b")
    assert (score.hyp, score.errors, score.hits) == ("a b", 0, 2)


def test_intent_metrics_from_a_parser():
    def intent_of(text: str) -> str | None:
        for word, intent in (("light", "lights"), ("door", "door"), ("music", "media")):
            if word in text:
                return intent
        return None

    stats = ErrorRateStats(normalize=str.lower, intent_of=intent_of)
    stats.append(
        ["1", "2", "3", "4", "5"],
        hyps=["turn on the light", "open the dor", "open the door", "play music", "hello"],
        refs=["turn on the light", "open the door", "open the door", "turn off the light", "hello"],
        intents=["lights", "door", "door", "lights", None],
    )
    out = stats.summarize()
    # labelled: lights->lights, door->None, door->door, lights->media
    assert out["num_intent_utterances"] == 4
    assert out["intent_accuracy"] == pytest.approx(50.0)
    # per label (precision, recall): lights (100, 50), door (100, 50), media (0, 0)
    assert out["intent_precision"] == pytest.approx(200 / 3)
    assert out["intent_recall"] == pytest.approx(100 / 3)
    f1 = 2 * 100 * 50 / 150
    assert out["intent_f1"] == pytest.approx(2 * f1 / 3)


def test_intent_metrics_perfect():
    out = intent_metrics(["a", "b", "a"], ["a", "b", "a"])
    assert out == {
        "intent_accuracy": 100.0,
        "intent_precision": 100.0,
        "intent_recall": 100.0,
        "intent_f1": 100.0,
        "num_intent_utterances": 3,
    }
