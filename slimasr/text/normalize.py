"""Transcript normalization, applied to every transcript before training and before scoring WER.

``normalize_text("It's 7:05 on May 1st, 2024 -- 50% off!")``
-> ``"it's seven oh five on may first twenty twenty four fifty percent off"``.

The steps, in order (each is one small function below):

1. Unicode NFKC (full-width letters, ligatures, superscripts become plain characters), digits of
   any script become ASCII digits, curly quotes become straight ones.
2. Lowercase (``str.casefold``, so "Straße" -> "strasse").
3. Dotted abbreviations lose their dots ("U.S.A." -> "usa", "p.m." -> "pm").
4. Numbers are spelled as spoken, with ``num2words``: currency, clock times, ordinals, decades,
   decimals, negatives, years, thousands separators, plain cardinals.
5. A few symbols become words: "&" -> "and", "%" -> "percent", "°" -> "degrees".
6. Accents are stripped ("café" -> "cafe"); letters with no ASCII form are dropped.
7. Every other character (punctuation, hyphens, symbols) becomes a space; apostrophes survive
   only inside words ("don't", "o'clock"), never as leading/trailing quotes.
8. Whitespace is collapsed.

With the default config the result contains only ``[a-z' ]``, has no double spaces, and
normalizing it again changes nothing.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal

from num2words import num2words


@dataclass(frozen=True)
class NormalizerConfig:
    """Which normalization rules apply. The defaults suit the English character vocabulary."""

    lowercase: bool = True  # casefold everything ("LibriSpeech" -> "librispeech")
    spell_numbers: bool = True  # "25" -> "twenty five"; off: digits are kept as they are
    strip_accents: bool = True  # "café" -> "cafe"; letters without an ASCII form are dropped
    keep_apostrophes: bool = True  # "don't" stays; off: "dont"


# A plain four-digit number in this range is read as a year ("1984" -> "nineteen eighty four");
# outside it, as a cardinal ("2500" -> "two thousand, five hundred").
YEAR_RANGE = (1100, 2099)
# Digit strings longer than this are IDs or phone numbers: read digit by digit ("one two ...").
MAX_CARDINAL_DIGITS = 12

_QUOTES = str.maketrans(
    {c: "'" for c in "‘’‚‛′`´ʼʹ"}
    | {c: '"' for c in "“”„‟″«»"}
)
_SYMBOL_WORDS = {"&": "and", "%": "percent", "°": "degrees"}
# (singular, plural, sub-unit singular, sub-unit plural) for amounts like "$3.50".
_CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
}
_SCALES = "thousand|million|billion|trillion"
# Letters that NFKD does not decompose but that are plainly one ASCII letter (or a ligature).
_LETTER_FOLDS = str.maketrans({
    "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ß": "ss", "ẞ": "SS",
    "ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ı": "i",
})  # fmt: skip

_CURRENCY_RE = re.compile(
    rf"([$£€])\s?([0-9]+)(?:\.([0-9]{{1,2}}))?(?![0-9])(?:\s?({_SCALES})\b)?", re.IGNORECASE
)
_TIME_RE = re.compile(r"(?<![0-9:])([01]?[0-9]|2[0-3]):([0-5][0-9])(?![0-9]|:[0-9])")
_ORDINAL_RE = re.compile(r"(?<![0-9])([0-9]+)(st|nd|rd|th)\b", re.IGNORECASE)
_DECADE_RE = re.compile(r"(?<![0-9])([0-9]*0)s\b", re.IGNORECASE)
_GROUPED_RE = re.compile(r"(?<![0-9,])[0-9]{1,3}(?:,[0-9]{3})+(?![0-9]|,[0-9])")
_DECIMAL_RE = re.compile(r"(?<![0-9])([0-9]*)\.([0-9]+)(?![0-9])")
_MINUS_RE = re.compile(r"(?<![\w.])[-−](?=\.?[0-9])")
_DIGIT_RE = re.compile(r"[0-9]")
_CARDINAL_RE = re.compile(r"(?<![0-9])[0-9]+(?![0-9])")
_ACRONYM_RE = re.compile(r"\b(?:[a-z]\.){2,}(?![a-z])", re.IGNORECASE)
# What survives as word characters when accents are stripped (ASCII only); the rest -> spaces.
_NOT_ASCII_WORD = {True: re.compile(r"[^a-zA-Z']"), False: re.compile(r"[^a-zA-Z0-9']")}
# An apostrophe at the start/end of a word, or next to another apostrophe, is a quote mark.
_QUOTE_APOSTROPHE_RE = re.compile(r"(?<![^\s'])'|'(?![^\s'])")


def normalize_text(text: str, config: NormalizerConfig = NormalizerConfig()) -> str:
    """Normalize one transcript for training and scoring (see the module docstring)."""
    text = _unicode_basics(text)
    if config.lowercase:
        text = text.casefold()
    if "." in text:
        text = _ACRONYM_RE.sub(lambda m: m.group(0).replace(".", ""), text)
    if config.spell_numbers and _DIGIT_RE.search(text):
        text = spell_numbers(text)
    for symbol, word in _SYMBOL_WORDS.items():
        text = text.replace(symbol, f" {word} ")
    if config.strip_accents:
        text = _strip_accents(text)
    text = _drop_non_word_chars(text, config)
    text = _QUOTE_APOSTROPHE_RE.sub(" ", text)
    if not config.keep_apostrophes:
        text = text.replace("'", "")
    return " ".join(text.split())


def _unicode_basics(text: str) -> str:
    """NFKC, any-script decimal digits -> ASCII, curly quotes -> straight."""
    if text.isascii():  # the common case, and nothing below changes ASCII
        return text
    text = unicodedata.normalize("NFKC", text)
    text = "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in text)
    return text.translate(_QUOTES)


def _strip_accents(text: str) -> str:
    """Drop combining marks after NFKD ("é" -> "e"), fold stroked letters ("ø" -> "o")."""
    if text.isascii():
        return text
    text = unicodedata.normalize("NFKD", text.translate(_LETTER_FOLDS))
    return "".join(c for c in text if not unicodedata.combining(c))


def _drop_non_word_chars(text: str, config: NormalizerConfig) -> str:
    """Replace by a space every character that is not a letter, apostrophe or (when numbers are
    not spelled) digit. With ``strip_accents`` only ASCII letters count; otherwise any Unicode
    letter and combining mark (needed by e.g. Devanagari) does."""
    if config.strip_accents:
        return _NOT_ASCII_WORD[config.spell_numbers].sub(" ", text)
    return "".join(c if c == "'" or _is_unicode_word_char(c, config) else " " for c in text)


def _is_unicode_word_char(char: str, config: NormalizerConfig) -> bool:
    if char.isdigit():
        return not config.spell_numbers
    return char.isalpha() or unicodedata.category(char).startswith("M")


# ---------------------------------------------------------------------------------------------
# Numbers


def spell_numbers(text: str) -> str:
    """Replace every ASCII number in ``text`` by words: "7:05, $3 and 21st" ->
    "seven oh five, three dollars and twenty-first". The most specific patterns go first."""
    text = _MINUS_RE.sub(" minus ", text)
    text = _CURRENCY_RE.sub(_currency, text)
    text = _TIME_RE.sub(_time, text)
    text = _ORDINAL_RE.sub(lambda m: _pad(m, num2words(int(m.group(1)), to="ordinal")), text)
    text = _DECADE_RE.sub(lambda m: _pad(m, _plural(_number_words(m.group(1)))), text)
    text = _GROUPED_RE.sub(lambda m: _pad(m, _cardinal(m.group(0).replace(",", ""))), text)
    text = _DECIMAL_RE.sub(_decimal, text)
    return _CARDINAL_RE.sub(lambda m: _pad(m, _number_words(m.group(0))), text)


def _pad(match: re.Match[str], words: str) -> str:
    """``words`` with a space on each side where it would otherwise touch a letter or digit."""
    text, start, end = match.string, match.start(), match.end()
    left = " " if start > 0 and text[start - 1].isalnum() else ""
    right = " " if end < len(text) and text[end].isalnum() else ""
    return f"{left}{words}{right}"


def _digits(digits: str) -> str:
    """Digit by digit: "007" -> "zero zero seven"."""
    return " ".join(num2words(int(d)) for d in digits)


def _cardinal(digits: str) -> str:
    """A digit string as a cardinal; leading zeros and very long strings are read digit by digit."""
    if (len(digits) > 1 and digits.startswith("0")) or len(digits) > MAX_CARDINAL_DIGITS:
        return _digits(digits)
    return num2words(int(digits))


def _number_words(digits: str) -> str:
    """A plain digit string: a year if it looks like one ("2024"), otherwise a cardinal."""
    if len(digits) == 4 and YEAR_RANGE[0] <= int(digits) <= YEAR_RANGE[1]:
        return num2words(int(digits), to="year")
    return _cardinal(digits)


def _plural(words: str) -> str:
    """Plural of a spelled number: "nineteen ninety" -> "nineteen nineties", "six" -> "sixes"."""
    if words.endswith("y"):
        return words[:-1] + "ies"
    return words + ("es" if words.endswith(("x", "s")) else "s")


def _decimal(match: re.Match[str]) -> str:
    """ "3.25" -> "three point two five", ".5" -> "point five"."""
    whole, fraction = match.group(1), match.group(2)
    words = f"point {_digits(fraction)}"
    return _pad(match, f"{_cardinal(whole)} {words}" if whole else words)


def _time(match: re.Match[str]) -> str:
    """ "7:30" -> "seven thirty", "7:05" -> "seven oh five", "10:00" -> "ten o'clock"."""
    hour, minute = num2words(int(match.group(1))), int(match.group(2))
    if minute == 0:
        return _pad(match, f"{hour} o'clock")
    if minute < 10:
        return _pad(match, f"{hour} oh {num2words(minute)}")
    return _pad(match, f"{hour} {num2words(minute)}")


def _currency(match: re.Match[str]) -> str:
    """ "$3" -> "three dollars", "$1.50" -> "one dollar fifty cents", "$2 million" -> "two million
    dollars". Hand-written: num2words' currency mode says "zero cents" and "five euro"."""
    unit, units, sub, subs = _CURRENCIES[match.group(1)]
    amount, cents, scale = match.group(2), match.group(3), match.group(4)
    if scale:
        number = f"{amount}.{cents}" if cents else amount
        return _pad(match, f"{num2words(Decimal(number))} {scale.lower()} {units}")
    parts = [f"{_cardinal(amount)} {unit if int(amount) == 1 else units}"]
    value = int(cents.ljust(2, "0")) if cents else 0
    if value:
        parts.append(f"{num2words(value)} {sub if value == 1 else subs}")
        if int(amount) == 0:  # "$0.50" -> "fifty cents"
            parts.pop(0)
    return _pad(match, " ".join(parts))
