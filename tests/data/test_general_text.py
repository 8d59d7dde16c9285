"""General English sentences for the corpus: spoken form, WordNet's examples, text files, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimasr.data.general_text import WORDNET_FILES, load_general_sentences, spoken_form
from slimasr.errors import ConfigError, DataError


@pytest.mark.parametrize("text, spoken", [
    ("She hummed a melody.", "she hummed a melody"),
    ("Don't stop-now, please!", "don't stop now please"),
    ("'quoted' words here", "quoted words here"),
    ("the 3 bears came", None),  # a number's reading is unknown
    ("a café au lait", None),  # a letter outside a-z
    ("two words", None),  # too short
    (" ".join(["word"] * 21), None),  # too long
])  # fmt: skip
def test_spoken_form(text: str, spoken: str | None) -> None:
    assert spoken_form(text) == spoken


def fake_wordnet(root: Path) -> Path:
    """WordNet's data-file layout: a licence header indented by two spaces, then one synset per
    line with its gloss after '|' and usage examples in double quotes."""
    root.mkdir()
    header = '  1 This software and database is being provided "as is" to you\n'
    lines = {
        "data.noun": '00001 03 n 01 melody 0 000 | a tune; "she hummed a melody" '
                     '"the melody of 1942 was sung"\n',
        "data.verb": '00002 29 v 01 run 0 000 | move fast; "Run to the store!"; '
                     '"she hummed a melody"\n',
        "data.adj": "00003 00 a 01 big 0 000 | large\n",
        "data.adv": '00004 02 r 01 fast 0 000 | quickly; "he ran very fast indeed"\n',
    }  # fmt: skip
    for name in WORDNET_FILES:
        (root / name).write_text(header + lines[name], encoding="latin-1")
    return root


def test_wordnet_examples_are_the_distinct_usable_quotes_sorted(tmp_path: Path) -> None:
    sentences = load_general_sentences("wordnet", fake_wordnet(tmp_path / "wn"))
    assert sentences == ["he ran very fast indeed", "run to the store", "she hummed a melody"]


def test_missing_wordnet_is_one_line_with_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="apt-get install wordnet-base") as e:
        load_general_sentences("wordnet", tmp_path)
    assert "\n" not in str(e.value)


def test_a_text_file_is_read_one_sentence_per_line(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text("B second line here\nA first line here\nB second line here\nno\n")
    assert load_general_sentences(str(path)) == ["a first line here", "b second line here"]


def test_a_file_without_usable_sentences_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("12 34 56\nhi\n")
    with pytest.raises(DataError, match="empty.txt.*no usable sentence"):
        load_general_sentences(str(path))
    with pytest.raises(DataError, match="missing.txt"):
        load_general_sentences(str(tmp_path / "missing.txt"))
