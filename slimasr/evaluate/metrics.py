"""Recognition quality: word/character error rates, sentence accuracy, word P/R/F1, first/last
word accuracy, intents.

    stats = ErrorRateStats()                       # normalizes with slimasr.text.normalize_text
    stats.append(["utt1", "utt2"], hyps=["turn on the lite", ""], refs=["Turn on the light.", "hi"])
    stats.summarize()   # {"wer": 40.0, "cer": ..., "sentence_accuracy": 0.0, "num_utterances": 2,
                        #  "excluded": {}, ...}
    stats.worst(10)     # [{"id", "ref", "hyp", "errors", "wer"}, ...] most errors first

Conventions:
- Every rate is a **percentage** (``wer``, ``cer``, ``sentence_accuracy``, ``word_*``,
  ``intent_*``), like speechbrain and icefall report them; WER can exceed 100.
- Both texts are normalized before scoring (``normalize``), then split on whitespace; words are
  aligned with ``jiwer.process_words``, characters (spaces included) with
  ``jiwer.process_characters``.
- Corpus rates are micro-averaged: total errors over total reference words.
- **Unscorable utterances are excluded, never scored.** A reference that is empty after
  normalization has no words to count errors against (and an empty hypothesis would make it a
  "correct sentence"), so ``append`` leaves it out and counts it under ``excluded``
  (``empty_reference``); callers exclude their own cases with ``exclude`` (evaluation: audio too
  short for its reference, no character the model knows, unusable audio). Every rate and
  ``num_utterances`` cover the scored utterances only; ``excluded`` says what was left out.
  Nothing scored gives WER 0 and sentence accuracy 0 (no correct sentence).
- Word precision = hits / hypothesis words, recall = hits / reference words; with nothing to
  divide by, they are 100 when the other side is empty too, else 0.
- First / last word accuracy: the share of utterances whose hypothesis starts (ends) with the
  reference's first (last) word; a streaming model that starts or stops late loses the edges.
- Intents (optional): pass ``intents`` (reference labels, None for unlabelled) to ``append`` and
  an ``intent_of(normalized hypothesis) -> label | None`` to the constructor. Accuracy is over the
  labelled utterances (no prediction counts as wrong); precision/recall/F1 are macro-averaged over
  the labels seen in references or predictions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import jiwer

Normalizer = Callable[[str], str]
IntentParser = Callable[[str], "str | None"]
PERCENT = 100.0
EMPTY_REFERENCE = "empty_reference"  # excluded-reason key: nothing left after normalization


def _default_normalize(text: str) -> str:
    from slimasr.text.normalize import normalize_text  # noqa: PLC0415

    return normalize_text(text)


@dataclass
class UtteranceScore:
    """Alignment counts of one utterance (texts already normalized)."""

    id: str
    ref: str
    hyp: str
    hits: int
    substitutions: int
    deletions: int
    insertions: int
    ref_words: int
    hyp_words: int
    char_errors: int
    ref_chars: int
    intent: str | None = None  # reference intent label
    intent_hyp: str | None = None  # predicted intent label

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def score_utterance(utt_id: str, hyp: str, ref: str) -> UtteranceScore:
    """Align one normalized hypothesis with its normalized reference."""
    hyp, ref = " ".join(hyp.split()), " ".join(ref.split())
    words = jiwer.process_words(ref, hyp)
    chars = jiwer.process_characters(ref, hyp)
    return UtteranceScore(
        id=utt_id,
        ref=ref,
        hyp=hyp,
        hits=words.hits,
        substitutions=words.substitutions,
        deletions=words.deletions,
        insertions=words.insertions,
        ref_words=len(ref.split()),
        hyp_words=len(hyp.split()),
        char_errors=chars.substitutions + chars.deletions + chars.insertions,
        ref_chars=len(ref),
    )


def _edge(score: UtteranceScore, i: int) -> bool:
    """Whether the hypothesis' first (i = 0) or last (i = -1) word is the reference's."""
    hyp, ref = score.hyp.split(), score.ref.split()
    return bool(hyp) and hyp[i] == ref[i]


class ErrorRateStats:
    """Accumulates utterance scores: ``append(ids, hyps, refs)`` per batch, then ``summarize()``."""

    def __init__(
        self,
        normalize: Normalizer | None = _default_normalize,
        intent_of: IntentParser | None = None,
    ):
        self.normalize = normalize or (lambda text: text)
        self.intent_of = intent_of
        self.scores: list[UtteranceScore] = []
        self.excluded: Counter = Counter()  # reason -> utterances left out of every rate

    def exclude(self, reason: str, count: int = 1) -> None:
        """Count ``count`` utterances left out of scoring for ``reason``."""
        self.excluded[reason] += count

    def append(
        self,
        ids: Sequence[str],
        hyps: Sequence[str],
        refs: Sequence[str],
        intents: Sequence[str | None] | None = None,
    ) -> None:
        """Score a batch: ids, hypotheses and references (raw text; normalized here) and
        optional reference intent labels."""
        if not len(ids) == len(hyps) == len(refs) or (
            intents is not None and len(intents) != len(ids)
        ):
            raise ValueError(
                f"ids, hyps, refs (and intents) differ in length: "
                f"{len(ids)}, {len(hyps)}, {len(refs)}"
            )
        for i, (utt_id, hyp, ref) in enumerate(zip(ids, hyps, refs)):
            ref = self.normalize(ref)
            if not ref.strip():
                self.exclude(EMPTY_REFERENCE)
                continue
            score = score_utterance(str(utt_id), self.normalize(hyp), ref)
            if intents is not None and intents[i] is not None:
                score.intent = intents[i]
                score.intent_hyp = self.intent_of(score.hyp) if self.intent_of else None
            self.scores.append(score)

    def summarize(self) -> dict[str, float | int]:
        """Flat corpus-level metrics (rates in percent) over the scored utterances, plus
        ``excluded`` (reason -> count); intent keys only if any utterance has a reference intent."""
        total = Counter()
        for s in self.scores:
            total.update({k: v for k, v in asdict(s).items() if isinstance(v, int)})
        errors = total["substitutions"] + total["deletions"] + total["insertions"]
        precision = _ratio(total["hits"], total["hyp_words"], total["ref_words"] == 0)
        recall = _ratio(total["hits"], total["ref_words"], total["hyp_words"] == 0)
        out: dict[str, float | int] = {
            "wer": PERCENT * errors / max(total["ref_words"], 1),
            "cer": PERCENT * total["char_errors"] / max(total["ref_chars"], 1),
            "sentence_accuracy": _ratio(
                sum(s.hyp == s.ref for s in self.scores), len(self.scores), False
            ),
            "num_utterances": len(self.scores),
            "excluded": dict(sorted(self.excluded.items())),
            "word_precision": precision,
            "word_recall": recall,
            "word_f1": _f1(precision, recall),
            "substitutions": total["substitutions"],
            "deletions": total["deletions"],
            "insertions": total["insertions"],
            "hits": total["hits"],
            "num_ref_words": total["ref_words"],
            "num_hyp_words": total["hyp_words"],
            "char_errors": total["char_errors"],
            "num_ref_chars": total["ref_chars"],
            # the edges of utterances: a streaming model that starts or stops late loses them
            "first_word_accuracy": _ratio(sum(_edge(s, 0) for s in self.scores), len(self.scores), False),
            "last_word_accuracy": _ratio(sum(_edge(s, -1) for s in self.scores), len(self.scores), False),
        }
        labelled = [s for s in self.scores if s.intent is not None]
        if labelled:
            out.update(
                intent_metrics([s.intent for s in labelled], [s.intent_hyp for s in labelled])
            )
        return out

    def worst(self, n: int = 10) -> list[dict[str, str | int | float]]:
        """The ``n`` utterances with the most word errors (ties: higher WER, then id)."""
        ranked = sorted(
            self.scores, key=lambda s: (-s.errors, -s.errors / max(s.ref_words, 1), s.id)
        )
        return [
            {
                "id": s.id,
                "ref": s.ref,
                "hyp": s.hyp,
                "errors": s.errors,
                "wer": PERCENT * s.errors / max(s.ref_words, 1),
            }
            for s in ranked[:n]
            if s.errors > 0
        ]

    def utterances(self) -> list[dict]:
        """Every utterance's normalized texts and counts, in the order appended."""
        return [asdict(s) | {"errors": s.errors} for s in self.scores]


def intent_metrics(refs: Sequence[str], hyps: Sequence[str | None]) -> dict[str, float | int]:
    """Intent accuracy and macro precision/recall/F1 (percent). ``hyps[i] is None``: no intent
    recognized (wrong, and a false positive for no label)."""
    labels = sorted(set(refs) | {h for h in hyps if h is not None})
    per_label = []
    for label in labels:
        tp = sum(r == label and h == label for r, h in zip(refs, hyps))
        predicted = sum(h == label for h in hyps)
        actual = sum(r == label for r in refs)
        p = _ratio(tp, predicted, actual == 0)
        r = _ratio(tp, actual, predicted == 0)
        per_label.append((p, r, _f1(p, r)))
    return {
        "intent_accuracy": _ratio(sum(r == h for r, h in zip(refs, hyps)), len(refs), True),
        "intent_precision": sum(p for p, _, _ in per_label) / len(labels),
        "intent_recall": sum(r for _, r, _ in per_label) / len(labels),
        "intent_f1": sum(f for _, _, f in per_label) / len(labels),
        "num_intent_utterances": len(refs),
    }


def _ratio(num: int, den: int, perfect_if_empty: bool) -> float:
    """``num / den`` in percent; ``den == 0`` gives 100 if that is a perfect result, else 0."""
    if den == 0:
        return PERCENT if perfect_if_empty else 0.0
    return PERCENT * num / den


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
