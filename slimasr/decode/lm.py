"""Word n-gram language models for CTC beam search: estimate, write and read ARPA files.

    build_ngram_lm(train_texts, "lm/3gram.arpa", order=3)  # interpolated modified Kneser-Ney
    lm = load_ngram_lm("lm/3gram.arpa")                    # KenLM if installed, else pure Python
    log10_p, state = lm.score(lm.begin_state(), "turn")

Why the estimator is hand-written: KenLM's estimator (``lmplz``) is a C++ program that pip cannot
install (the ``kenlm`` wheel only *reads* models), and ``nltk.lm`` cannot export ARPA and has no
backoff weights. This module builds the same model ``lmplz`` builds — interpolated modified
Kneser-Ney (Chen & Goodman 1998; Heafield et al. 2013), without pruning — in plain Python. It is
meant for domain corpora (up to a few million words); for a large corpus, run ``lmplz`` and pass
its ARPA/binary file to the decoder instead.

Reading: ``load_ngram_lm`` uses the ``kenlm`` module when installed (fast; reads binary files too)
and otherwise ``NgramModel``, a small pure-Python ARPA reader that scores exactly like KenLM
(tested against it), so LM decoding of a small domain LM needs no compiled extension.

The model, per order n (h = context of n-1 words, a(.) = adjusted counts):

    a(g)      raw count if n is the highest order or g starts with <s>, otherwise the number of
              distinct words seen just before g (the Kneser-Ney continuation count)
    D1,D2,D3  discounts from count-of-counts t_k of order n: Y = t1 / (t1 + 2 t2),
              D_k = k - (k + 1) Y t_{k+1} / t_k  (lmplz's fallback when that is undefined)
    p(w|h)  = (a(hw) - D(a(hw))) / sum_x a(hx)  +  gamma(h) p(w|h[1:])
    gamma(h)= (D1 N1(h) + D2 N2(h) + D3 N3+(h)) / sum_x a(hx)
    unigrams interpolate with the uniform distribution over the vocabulary (+ </s>, <unk>).

In ARPA form each listed n-gram stores log10 p(w|h) and each context stores log10 gamma(h) as
its backoff weight, so for every context the probabilities sum to one.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol, Sequence

from slimasr.errors import ConfigError, DataError, SlimasrError
from slimasr.io import atomic_path

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
SPECIAL_WORDS = (BOS, EOS, UNK)
# lmplz's --discount_fallback defaults (D1, D2, D3+): used for an order whose count-of-counts make
# the closed-form discounts undefined or out of range (tiny or highly repetitive corpora).
DISCOUNT_FALLBACK = (0.5, 1.0, 1.5)
# ARPA convention for "probability zero": <s> is only ever a context, never predicted.
LOG10_ZERO = -99.0
# log10 p(<unk>) KenLM substitutes when an ARPA file has no <unk> unigram; the reader does the same.
MISSING_UNK_LOG10 = -100.0
# Digits after the decimal point for log10 values in the ARPA file (1e-7 ~ 2e-7 relative error).
ARPA_DIGITS = 7
MIN_ORDER = 2  # KenLM refuses unigram-only models
MAX_ORDER = 6  # the kenlm wheel's compiled limit (KENLM_MAX_ORDER): higher orders would not load
INSTALL_HINT = 'pip install "slimasr[lm]"'

State = tuple[str, ...]  # pure-Python LM state: the last (order - 1) words


class LanguageModel(Protocol):
    """What the beam search needs from a word n-gram LM (log10 scores, as in ARPA/KenLM)."""

    order: int
    vocabulary: frozenset[str]  # words the LM knows (no <s>, </s>, <unk>); empty if unknown

    def begin_state(self) -> object: ...
    def null_state(self) -> object: ...
    def score(self, state: object, word: str) -> tuple[float, object]: ...


# ---------------------------------------------------------------------------------------------
# The model and its scoring


@dataclass
class NgramModel:
    """A backoff n-gram model: ``ngrams[n - 1][words] = (log10 prob, log10 backoff)``."""

    order: int
    ngrams: list[dict[State, tuple[float, float]]]
    vocabulary: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.vocabulary = frozenset(w for (w,) in self.ngrams[0] if w not in SPECIAL_WORDS)

    def begin_state(self) -> State:
        """Context at the start of a sentence."""
        return (BOS,) if self.order > 1 else ()

    def null_state(self) -> State:
        """No context (a sentence fragment)."""
        return ()

    def log10_prob(self, context: Sequence[str], word: str) -> float:
        """log10 p(word | context) with ARPA backoff; unknown words score as ``<unk>``."""
        if (word,) not in self.ngrams[0]:
            word = UNK
        context = tuple(context)[max(0, len(context) - self.order + 1) :] if self.order > 1 else ()
        backoff = 0.0
        for start in range(len(context) + 1):
            history = context[start:]
            entry = self.ngrams[len(history)].get(history + (word,))
            if entry is not None:
                return backoff + entry[0]
            if history:  # back off from `history`: multiply by its weight (1 if never a context)
                backoff += self.ngrams[len(history) - 1].get(history, (0.0, 0.0))[1]
        return backoff + MISSING_UNK_LOG10  # no <unk> unigram (read_arpa always adds one)

    def score(self, state: State, word: str) -> tuple[float, State]:
        """``(log10 p(word | state), next state)``, KenLM's ``BaseScore`` in pure Python."""
        next_state = (
            (state + (word,))[max(0, len(state) + 2 - self.order) :] if self.order > 1 else ()
        )
        return self.log10_prob(state, word), next_state

    def sentence_log10(self, words: Sequence[str]) -> float:
        """log10 p(<s> words </s>), like ``kenlm.Model.score(" ".join(words))``."""
        state, total = self.begin_state(), 0.0
        for word in [*words, EOS]:
            logp, state = self.score(state, word)
            total += logp
        return total


class KenlmModel:
    """A ``kenlm.Model`` behind the ``LanguageModel`` interface (states are ``kenlm.State``)."""

    def __init__(self, path: str | Path, vocabulary: Iterable[str] = ()):
        import kenlm  # noqa: PLC0415 - optional extra, checked by load_ngram_lm

        self._kenlm = kenlm
        config = kenlm.Config()
        config.show_progress = False  # no progress bar on stderr while loading
        self._model = kenlm.Model(str(path), config)
        self.order = int(self._model.order)
        self.vocabulary = frozenset(vocabulary)

    def begin_state(self) -> object:
        state = self._kenlm.State()
        self._model.BeginSentenceWrite(state)
        return state

    def null_state(self) -> object:
        state = self._kenlm.State()
        self._model.NullContextWrite(state)
        return state

    def score(self, state: object, word: str) -> tuple[float, object]:
        out = self._kenlm.State()
        return self._model.BaseScore(state, word, out), out


def kenlm_available() -> bool:
    try:
        import kenlm  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def load_ngram_lm(path: str | Path, backend: str = "auto") -> LanguageModel:
    """Load an ARPA (or KenLM binary) file. ``backend``: "auto" (KenLM if installed, else pure
    Python), "kenlm" or "python" (ARPA only). The vocabulary comes from the ARPA unigrams."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "language model file not found")
    is_arpa = _looks_like_arpa(path)
    if backend not in ("auto", "kenlm", "python"):
        raise SlimasrError(f"unknown LM backend {backend!r}: expected auto, kenlm or python")
    use_kenlm = backend == "kenlm" or (backend == "auto" and (kenlm_available() or not is_arpa))
    if use_kenlm and not kenlm_available():
        raise DataError(path, f"reading this language model needs the kenlm module: {INSTALL_HINT}")
    if not use_kenlm:
        return read_arpa(path)
    vocabulary = read_arpa_vocabulary(path) if is_arpa else ()
    try:
        return KenlmModel(path, vocabulary)
    except (OSError, RuntimeError) as e:
        raise DataError(path, f"kenlm cannot read it ({e})") from None


def _looks_like_arpa(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4096).lstrip().startswith(b"\\data\\")


# ---------------------------------------------------------------------------------------------
# Estimation (interpolated modified Kneser-Ney)


def build_ngram_lm(texts: Iterable[str], out_path: str | Path, order: int = 3,
                   source: str | Path | None = None) -> NgramModel:
    """Estimate a word n-gram LM from ``texts`` (one sentence each, words split on whitespace,
    already normalized) and write it as an ARPA file. Returns the model. ``source``: the file
    the texts come from, which an error about them names."""
    model = estimate_kneser_ney(texts, order, source)
    write_arpa(model, out_path)
    return model


def corpus_vocabulary(texts: Iterable[str]) -> list[str]:
    """Sorted distinct words of ``texts``: the lexicon beam search snaps words to."""
    return sorted({word for text in texts for word in text.split()})


def estimate_kneser_ney(texts: Iterable[str], order: int = 3,
                        source: str | Path | None = None) -> NgramModel:
    """Interpolated modified Kneser-Ney n-gram model of ``texts`` (see the module docstring);
    ``source``: the file the texts come from (named by a DataError about them)."""
    if isinstance(order, bool) or not isinstance(order, int) or not MIN_ORDER <= order <= MAX_ORDER:
        raise ConfigError(f"n-gram order must be >= {MIN_ORDER} and <= {MAX_ORDER} (KenLM's limit), "
                          f"got {order!r}")
    counts = _count_ngrams(texts, order)
    _check_counts(counts, source)
    adjusted = _adjusted_counts(counts)
    ngrams: list[dict[State, tuple[float, float]]] = []
    lower: dict[State, float] = {}  # interpolated probabilities of order n - 1 (not log)
    for n in range(1, order + 1):
        discounts = _discounts(adjusted[n - 1])
        probs, gammas = _interpolate(adjusted[n - 1], discounts, lower)
        if n > 1:  # a context's backoff weight is gamma; attach it to the order n - 1 entries
            prev = ngrams[n - 2]
            for context, gamma in gammas.items():
                prev[context] = (prev[context][0], math.log10(gamma))
        ngrams.append({g: (_log10(p), 0.0) for g, p in probs.items()})
        lower = probs
    return NgramModel(order, ngrams)


def _check_counts(counts: list[Counter[State]], source: str | Path | None = None) -> None:
    """ConfigError/DataError (naming ``source``) unless there are words and n-grams of the
    highest order."""
    if not counts[0]:
        raise DataError(source, "no words to build a language model from (empty transcripts)")
    if not counts[-1]:
        longest = max(n for n, table in enumerate(counts, start=1) if table)
        raise ConfigError(f"n-gram order {len(counts)}: no sentence is long enough (with <s> and "
                          f"</s> the longest gives {longest}-grams); use order {longest} or less")


def _count_ngrams(texts: Iterable[str], order: int) -> list[Counter[State]]:
    """Raw counts of every n-gram (n = 1..order) of the sentences padded with <s> ... </s>."""
    counts: list[Counter[State]] = [Counter() for _ in range(order)]
    for text in texts:
        words = text.split()
        if not words:
            continue
        padded = (BOS, *words, EOS)
        for n in range(1, order + 1):
            counts[n - 1].update(padded[i : i + n] for i in range(len(padded) - n + 1))
    return counts


def _adjusted_counts(counts: list[Counter[State]]) -> list[dict[State, int]]:
    """Kneser-Ney counts: raw at the highest order and for n-grams starting with <s>, otherwise
    the number of distinct words seen to the left."""
    adjusted: list[dict[State, int]] = [dict(counts[-1])]
    for n in range(len(counts) - 1, 0, -1):  # order n from the left extensions at order n + 1
        left = Counter(g[1:] for g in counts[n])
        adjusted.insert(0, {g: (c if g[0] == BOS else left[g]) for g, c in counts[n - 1].items()})
    return adjusted


def _discounts(adjusted: dict[State, int]) -> tuple[float, float, float]:
    """Closed-form modified Kneser-Ney discounts (D1, D2, D3+) of one order, or the fallback."""
    t = Counter(c for g, c in adjusted.items() if c <= 4 and g != (BOS,))
    if min(t[1], t[2], t[3], t[4]) == 0:
        return DISCOUNT_FALLBACK
    y = t[1] / (t[1] + 2 * t[2])
    d = tuple(k - (k + 1) * y * t[k + 1] / t[k] for k in (1, 2, 3))
    if not all(0 < dk < k for dk, k in zip(d, (1, 2, 3))):
        return DISCOUNT_FALLBACK
    return d  # type: ignore[return-value]


def _interpolate(
    adjusted: dict[State, int], discounts: tuple[float, float, float], lower: dict[State, float]
) -> tuple[dict[State, float], dict[State, float]]:
    """Probabilities of one order's n-grams and the interpolation weight gamma of each context.

    ``lower`` holds the probabilities of order n - 1 (empty for unigrams, which interpolate with
    the uniform distribution over the vocabulary plus </s> and <unk>)."""
    totals: dict[State, int] = defaultdict(int)
    mass: dict[State, float] = defaultdict(float)  # discounted mass per context
    for g, c in adjusted.items():
        if g == (BOS,):
            continue
        totals[g[:-1]] += c
        mass[g[:-1]] += discounts[min(c, 3) - 1]
    gammas = {h: mass[h] / totals[h] for h in totals}
    probs: dict[State, float] = {}
    if not lower:  # unigrams
        vocab = {g for g in adjusted if g != (BOS,)} | {(UNK,)}
        uniform = gammas[()] / len(vocab)
        probs = {g: uniform for g in vocab}
        for g, c in adjusted.items():
            if g != (BOS,):
                probs[g] += (c - discounts[min(c, 3) - 1]) / totals[()]
        probs[(BOS,)] = 0.0
        return probs, gammas
    for g, c in adjusted.items():
        h = g[:-1]
        probs[g] = (c - discounts[min(c, 3) - 1]) / totals[h] + gammas[h] * lower[g[1:]]
    return probs, gammas


def _log10(p: float) -> float:
    return math.log10(p) if p > 0 else LOG10_ZERO


# ---------------------------------------------------------------------------------------------
# ARPA files


def write_arpa(model: NgramModel, path: str | Path) -> None:
    """Write ``model`` as an ARPA text file (atomically). N-grams are sorted for stable output."""
    top = model.order
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        f.write("\\data\\\n")
        for n, table in enumerate(model.ngrams, start=1):
            f.write(f"ngram {n}={len(table)}\n")
        for n, table in enumerate(model.ngrams, start=1):
            f.write(f"\n\\{n}-grams:\n")
            for g in sorted(table):
                logp, backoff = table[g]
                line = f"{logp:.{ARPA_DIGITS}f}\t{' '.join(g)}"
                if n < top:  # every lower-order line carries a backoff, as lmplz writes it
                    line += f"\t{backoff:.{ARPA_DIGITS}f}"
                f.write(line + "\n")
        f.write("\n\\end\\\n")


def read_arpa(path: str | Path) -> NgramModel:
    """Read an ARPA file into a pure-Python ``NgramModel``; one-line DataError if malformed."""
    path = Path(path)
    expected: dict[int, int] = {}
    tables: list[dict[State, tuple[float, float]]] = []
    section = "start"
    with path.open(encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            where = f"line {number}"
            if line == "\\data\\":
                section = "data"
            elif line == "\\end\\":
                section = "end"
                break
            elif line.startswith("\\") and line.endswith("-grams:"):
                section = "ngrams"
                n = _parse_int(line[1:-7], path, where)
                if n != len(tables) + 1:
                    raise DataError(path, f"{where}: expected \\{len(tables) + 1}-grams:")
                tables.append({})
            elif section == "data" and line.startswith("ngram "):
                n_text, _, count = line[6:].partition("=")
                expected[_parse_int(n_text, path, where)] = _parse_int(count, path, where)
            elif section == "ngrams":
                g, entry = _parse_ngram_line(line, len(tables), path, where)
                tables[-1][g] = entry
    _check_arpa(path, section, expected, tables)
    return NgramModel(len(tables), tables)


def _parse_int(text: str, path: Path, where: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise DataError(path, f"{where}: expected a number, got {text!r}") from None


def _parse_ngram_line(
    line: str, n: int, path: Path, where: str
) -> tuple[State, tuple[float, float]]:
    parts = line.split("\t") if "\t" in line else line.split()
    if "\t" in line:
        words = tuple(parts[1].split()) if len(parts) > 1 else ()
        rest = parts[2:]
    else:
        words, rest = tuple(parts[1 : 1 + n]), parts[1 + n :]
    if len(words) != n or len(rest) > 1:
        raise DataError(path, f"{where}: expected a {n}-gram line 'log10p<TAB>words[<TAB>backoff]'")
    try:
        return words, (float(parts[0]), float(rest[0]) if rest else 0.0)
    except ValueError:
        raise DataError(path, f"{where}: bad number in {line!r}") from None


def _check_arpa(path: Path, section: str, expected: dict[int, int], tables: list[dict]) -> None:
    if section != "end":
        raise DataError(path, "not a complete ARPA file (no \\data\\ ... \\end\\)")
    if not tables or sorted(expected) != list(range(1, len(tables) + 1)):
        raise DataError(path, "ARPA header counts do not match its n-gram sections")
    for n, table in enumerate(tables, start=1):
        if len(table) != expected[n]:
            raise DataError(path, f"header says {expected[n]} {n}-grams, found {len(table)}")
    if (UNK,) not in tables[0]:  # what KenLM does when a file lacks <unk>
        tables[0][(UNK,)] = (MISSING_UNK_LOG10, 0.0)


def read_arpa_vocabulary(path: str | Path) -> set[str]:
    """The words of an ARPA file's unigram section (without <s>, </s>, <unk>), read quickly."""
    words: set[str] = set()
    inside = False
    with Path(path).open(encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if line == "\\1-grams:":
                inside = True
            elif inside and line.startswith("\\"):
                break
            elif inside and line:
                parts = line.split("\t") if "\t" in line else line.split()
                if len(parts) >= 2 and parts[1] not in SPECIAL_WORDS:
                    words.add(parts[1])
    return words
