"""The template grammar (exact counts on toy grammars) and the smart-home domain's coverage."""

from __future__ import annotations

import re

import numpy as np
import pytest

from slimasr.data.grammar import Grammar, Intent, smart_home_grammar

SPOKEN = re.compile(r"[a-z']+( [a-z']+)*")


@pytest.fixture(scope="module")
def home() -> Grammar:
    return smart_home_grammar()


def toy(*templates: str, rules: dict | None = None, **kwargs) -> Grammar:
    rules = {"n": ["one", "two three"]} if rules is None else rules
    return Grammar([Intent("toy", "test", templates)], rules, set(rules), **kwargs)


# ---- the grammar machinery ------------------------------------------------------------------
def test_counts_vocabulary_and_enumeration_are_exact() -> None:
    g = toy("(x | y) [z] <n>")
    assert g.count_derivations() == 8
    assert g.count_sentences() == 8
    assert g.count_sentences(limit=5) == 5
    assert g.count_sentences(limit=None) == 8
    assert g.vocabulary() == {"x", "y", "z", "one", "two", "three"}


def test_count_sentences_counts_distinct_strings_not_derivations() -> None:
    g = toy("(a | a) <n>", "a one")
    assert g.count_derivations() == 5
    assert g.count_sentences() == 2  # "a one", "a two three"


def test_sample_reports_slots_and_numbers_repeated_ones() -> None:
    g = toy("add <n> and <n>")
    u = g.sample(np.random.default_rng(0))
    assert u.intent == "toy"
    assert set(u.slots) == {"n", "n_2"}
    assert u.text == f"add {u.slots['n']} and {u.slots['n_2']}"


def test_optional_probability_controls_optional_words() -> None:
    rng = np.random.default_rng(0)
    never = toy("[please] go", optional_probability=0.0)
    always = toy("[please] go", optional_probability=1.0)
    assert {never.sample(rng).text for _ in range(20)} == {"go"}
    assert {always.sample(rng).text for _ in range(20)} == {"please go"}


def test_sampling_weights_follow_alternative_sizes() -> None:
    # weight = derivations ** exponent: with exponent 1 every sentence is equally likely.
    g = toy("(<big> | small)", rules={"big": ["a", "b", "c"]}, sampling_exponent=1.0)
    rng = np.random.default_rng(0)
    small = np.mean([g.sample(rng).text == "small" for _ in range(4000)])
    assert small == pytest.approx(0.25, abs=0.03)


@pytest.mark.parametrize(
    "template, rules, message",
    [
        ("go <nowhere>", {}, "unknown rule <nowhere>"),
        ("go <a>", {"a": ["<b>"], "b": ["<a>"]}, "recursive rule"),
        ("go (x | y", {}, "missing ')'"),
        ("go x)", {}, "unexpected ')'"),
        ("Go", {}, "unexpected 'G'"),
    ],
)
def test_bad_grammars_raise(template: str, rules: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Grammar([Intent("bad", "test", (template,))], rules, set())


# ---- the smart-home domain ------------------------------------------------------------------
def test_every_required_domain_has_intents(home: Grammar) -> None:
    domains = home.domains()
    required = ["lights", "climate", "timers", "alarms", "media", "locks", "blinds",
                "appliances", "weather", "calendar", "shopping", "reminders", "time"]  # fmt: skip
    for domain in required:
        assert domains.get(domain), domain
    assert len(home.intents) >= 40


def test_every_intent_has_several_phrasings(home: Grammar) -> None:
    for name, intent in home.intents.items():
        assert len(intent.templates) >= 2, name
        assert home.count_sentences(limit=10, intent=name) == 10, name


def test_at_least_5000_sentences_and_300_words(home: Grammar) -> None:
    assert home.count_sentences(limit=5000) == 5000  # enumerated: a sound lower bound
    assert len(home.vocabulary()) >= 300
    assert all(re.fullmatch(r"[a-z']+", word) for word in home.vocabulary())


def test_numbers_times_dates_percentages_are_slots(home: Grammar) -> None:
    rng = np.random.default_rng(0)
    slots: dict[str, set[str]] = {}
    for _ in range(3000):
        for name, value in home.sample(rng).slots.items():
            slots.setdefault(name, set()).add(value)
    for name in ("time", "date", "duration", "percent", "temperature", "channel", "room"):
        assert len(slots.get(name, ())) >= 5, name
    assert any(v.endswith(" percent") for v in slots["percent"])
    minutes = re.compile(r"(twenty|thirty|forty|fifty) \w+ minutes")
    assert any(minutes.fullmatch(v) for v in slots["duration"])
    assert any(re.fullmatch(r"\w+ o'clock", v) for v in slots["time"])


def test_samples_are_spoken_form_deterministic_and_varied(home: Grammar) -> None:
    first, second = np.random.default_rng(5), np.random.default_rng(5)
    assert [home.sample(first) for _ in range(50)] == [home.sample(second) for _ in range(50)]
    rng = np.random.default_rng(0)
    samples = [home.sample(rng) for _ in range(2000)]
    for u in samples:
        assert SPOKEN.fullmatch(u.text), u.text
        assert u.intent in home.intents
        for value in u.slots.values():
            assert value in u.text
    assert len({u.text for u in samples}) > 1500
    assert len({u.intent for u in samples}) == len(home.intents)
