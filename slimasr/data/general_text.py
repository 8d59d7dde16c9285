"""General English sentences for the corpus, beside the smart-home grammar.

    sentences = load_general_sentences("wordnet")          # WordNet's usage examples
    sentences = load_general_sentences("my_sentences.txt")  # one sentence per line

A character CTC model trained only on the grammar's sentences learns which letters follow which
in 674 words of smart-home commands; spoken with a voice it trained on, the Asterisk prompts'
telephone sentences still score ~49% CER (bench/README.md, "Is it the voice or the words?").
These sentences give the train split words and spellings beyond the grammar
(``SynthConfig.general_share``). They are written in the corpus's spoken form: lower case, the
characters of the grammar's vocabulary (a-z, apostrophe, space), hyphens as spaces; a sentence
with digits (whose reading is unknown) or other letters is left out rather than guessed at.

The default source is the usage examples quoted in WordNet 3.0's glosses ("she hummed a
melody"): about 42,000 distinct short sentences over about 30,000 words, from the Debian package
``wordnet-base`` (WordNet licence: use, copy and distribute freely, with its copyright notice).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from slimasr.data.synthesizers.base import debian_version
from slimasr.errors import ConfigError, DataError

WORDNET = "wordnet"  # the built-in source's name
WORDNET_DIR = Path("/usr/share/wordnet")  # where wordnet-base installs its database
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
WORDNET_PACKAGE = "wordnet-base"
MIN_WORDS, MAX_WORDS = 3, 20  # shorter is not a sentence; longer exceeds the grammar's utterances
_QUOTED = re.compile(r'"([^"]+)"')
_SPOKEN = re.compile(r"[a-z' ]*")


def load_general_sentences(source: str, wordnet_dir: Path = WORDNET_DIR) -> list[str]:
    """The distinct sentences of ``source`` (``"wordnet"`` or a UTF-8 text file, one sentence
    per line) in spoken form, sorted. ConfigError when WordNet is not installed, DataError
    naming the file when it cannot be read or holds no usable sentence."""
    if source == WORDNET:
        lines = _wordnet_examples(wordnet_dir)
        origin = wordnet_dir
    else:
        path = Path(source)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(path, f"cannot read the general sentences: {e}") from None
        origin = path
    sentences = sorted({s for s in map(spoken_form, lines) if s is not None})
    if not sentences:
        raise DataError(origin, f"no usable sentence ({MIN_WORDS}-{MAX_WORDS} words of a-z, "
                                "apostrophes and hyphens, no digits)")  # fmt: skip
    return sentences


def spoken_form(text: str) -> str | None:
    """``text`` lower-cased, hyphens and punctuation as spaces, one space between words; None
    when it holds digits or letters outside a-z, or has too few or too many words."""
    text = text.lower().replace("-", " ").replace("\u2019", "'")
    if re.search(r"\d", text):
        return None
    text = re.sub(r"[.,;:!?\"()\[\]]", " ", text)
    if not _SPOKEN.fullmatch(text):
        return None
    words = [w.strip("'") for w in text.split()]
    words = [w for w in words if w]
    return " ".join(words) if MIN_WORDS <= len(words) <= MAX_WORDS else None


def source_record(source: str, wordnet_dir: Path = WORDNET_DIR) -> dict:
    """What corpus.json records of ``source``: the package version, or the file's sha256."""
    if source == WORDNET:
        return {"source": WORDNET, "packages": {WORDNET_PACKAGE: debian_version(WORDNET_PACKAGE)}}
    return {"source": str(source), "sha256": hashlib.sha256(Path(source).read_bytes()).hexdigest()}


def check_source(source: str, wordnet_dir: Path = WORDNET_DIR) -> None:
    """ConfigError (one line, with the install command) when the WordNet database is missing;
    DataError when a file source is missing."""
    if source == WORDNET:
        missing = [name for name in WORDNET_FILES if not (wordnet_dir / name).is_file()]
        if missing:
            raise ConfigError(f"SynthConfig: general_text=wordnet needs WordNet's database "
                              f"({wordnet_dir / missing[0]} not found); install it with: "
                              f"apt-get install {WORDNET_PACKAGE}, or give a text file")  # fmt: skip
    elif not Path(source).is_file():
        raise DataError(Path(source), "file not found (general_text: a text file, one sentence per line)")


def _wordnet_examples(wordnet_dir: Path) -> list[str]:
    """The quoted usage examples in the glosses of WordNet's data files."""
    check_source(WORDNET, wordnet_dir)
    examples = []
    for name in WORDNET_FILES:
        with open(wordnet_dir / name, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):  # the licence header
                    continue
                _, _, gloss = line.partition("|")
                examples += _QUOTED.findall(gloss)
    return examples

