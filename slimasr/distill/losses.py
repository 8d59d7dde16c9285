"""Knowledge-distillation losses: pure functions of tensors, every weight and threshold an argument.

Shapes: ``N`` utterances, ``T`` frames, ``V`` tokens, ``D`` hidden dims. Every loss is masked by
lengths: padding frames contribute nothing, whatever values they hold (even NaN). Teacher
tensors are targets and are detached. Blank is token 0 (``BLANK_ID``).

- ``ctc_term``: the ordinary CTC objective, optionally with per-utterance weights.
- ``kd_kl`` / ``kd_kl_topk``: Hinton distillation of frame-level CTC posteriors (from the full
  teacher distribution, or from a cached top-k of it), with mostly-blank frames down-weighted
  or (symmetric blank selection) mostly dropped.
- ``delay_frames`` / ``spike_delay``: Delayed KD for causal students (teacher frame t - d taught
  at student frame t) and the d at which a student's spikes best follow the teacher's;
  ``force_blank_start``: no token on an utterance's first frames (CTC aligns the words after).
- ``align_time`` / ``align_log_probs``: bring a teacher sequence to the student's frame rate.
- ``HiddenProjector`` + ``hidden_loss``: DistilHuBERT-style hidden-layer matching.
- ``pseudo_label_keep``: Distil-Whisper's WER filter for teacher transcripts.

Frame-rate alignment. Each target frame ``j`` of an utterance with ``n_t`` valid target frames and
``n_s`` valid source frames covers the source time span ``[j r, (j + 1) r)`` with
``r = n_s / n_t``; its value is the average of the source frames overlapping that span, weighted
by the overlap. For integer ratios this is exactly average pooling when the source is finer
(x2 -> x4 averages pairs) and repetition when it is coarser (x4 -> x2 repeats each frame twice);
for other ratios a target frame straddling a source boundary blends its two neighbours (where
nearest-neighbour repetition would pick one). Valid frames map only to valid frames; padding
target frames are zero. Posteriors must be aligned as probabilities, not log-probabilities (an
average of log-probabilities is not a distribution): ``align_log_probs`` does exp -> align ->
renormalise -> log.
"""

from __future__ import annotations

import math
from typing import Sequence

import jiwer
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimasr.models.common import lengths_to_mask
from slimasr.train.loop import ctc_loss, reduce_loss

BLANK_ID = 0  # the CTC blank is token 0 in every slimasr vocabulary
IMPOSSIBLE = -1e4  # a log probability no alignment survives
BLANK_SELECTIONS = ("none", "down_weight", "symmetric")
HIDDEN_KINDS = ("l1_cos", "mse")
# -log(sigmoid(1)): the smallest value of DistilHuBERT's cosine term (reached when cos = 1);
# subtracted so that a perfect match scores 0 (the gradients are unchanged).
_MIN_LOGSIG_COS = math.log1p(math.exp(-1.0))


# ---------------------------------------------------------------------------------------------
# CTC


def ctc_term(log_probs: Tensor, out_lens: Tensor, targets: Tensor, target_lens: Tensor,
             reduction: str = "mean", weights: Tensor | None = None) -> Tensor:
    """Scalar CTC objective. log_probs: (N, T, V), out_lens: (N,), targets: (N, S) padded,
    target_lens: (N,). ``reduction`` as ``slimasr.train.loop.reduce_loss`` ("mean": per-utterance
    loss / target length, averaged; "sum": per-utterance loss averaged). ``weights: (N,)``, when
    given, makes the average a weighted one (weight 0 drops an utterance); all-zero weights give
    0 (with a graph, so backward still runs)."""
    per_utt = ctc_loss(log_probs, out_lens, targets, target_lens)  # (N,)
    if weights is None:
        return reduce_loss(per_utt, target_lens, reduction)
    if reduction == "mean":
        per_utt = per_utt / target_lens.clamp(min=1).to(per_utt)
    weights = weights.to(per_utt).detach()
    # where(): an impossible utterance with weight 0 must not turn the sum into NaN
    weighted = torch.where(weights > 0, per_utt * weights, torch.zeros_like(per_utt))
    return weighted.sum() / weights.sum().clamp(min=torch.finfo(per_utt.dtype).tiny)


# ---------------------------------------------------------------------------------------------
# Frame-level KD


def kd_kl(student_log_probs: Tensor, teacher_log_probs: Tensor, lens: Tensor, temperature: float,
          blank_weight: float = 1.0, blank_threshold: float = 0.9, selection: str = "down_weight",
          blank_keep: float = 0.1, frame_mask: Tensor | None = None) -> Tensor:
    """Hinton KD on CTC posteriors: T^2 * KL(p_teacher^T || p_student^T) per frame, summed over the
    vocabulary, averaged over valid frames. student_log_probs, teacher_log_probs: (N, T, V) (log
    posteriors, or logits: both are re-normalised after dividing by T), lens: (N,).

    Blank frames (``selection``): "down_weight": a frame whose teacher blank probability
    (unsoftened) is >= ``blank_threshold`` weighs ``blank_weight``, the others 1; "none": every
    frame weighs 1; "symmetric": see ``blank_selection_mask`` (``blank_keep``). The average is
    the weighted average. ``frame_mask: (N, T)`` bool, when given, drops the frames where it is
    False as well (``delay_frames``)."""
    mask = lengths_to_mask(lens, student_log_probs.shape[1])  # (N, T)
    student = _soften(student_log_probs, mask, temperature)  # (N, T, V)
    teacher = _soften(teacher_log_probs.detach(), mask, temperature)
    kl = _kl_rows(teacher, student) * temperature ** 2  # (N, T)
    blank_logp = _masked(teacher_log_probs.detach()[..., BLANK_ID], mask)  # (N, T)
    student_blank = _student_blank(student_log_probs, mask, selection)
    weights = _selection_weights(blank_logp, student_blank, mask, selection, blank_weight,
                                 blank_threshold, blank_keep)
    return _weighted_mean(kl, weights if frame_mask is None else weights * frame_mask)


def kd_kl_topk(student_log_probs: Tensor, topk_logp: Tensor, topk_idx: Tensor, lens: Tensor,
               temperature: float, blank_weight: float = 1.0, blank_threshold: float = 0.9,
               selection: str = "down_weight", blank_keep: float = 0.1) -> Tensor:
    """``kd_kl`` from a cached top-k of the teacher. student_log_probs: (N, T, V); topk_logp:
    (N, T, k) the teacher's k largest log-probs, topk_idx: (N, T, k) int64 their token ids;
    lens: (N,).

    Approximation: the teacher distribution is the k stored log-probs softened by T and
    renormalised over those k; the student's softened log-probs (normalised over all V) are read
    at the same k ids and its remaining mass is ignored. The per-frame value is then
    KL(teacher_k || student renormalised on the k ids) - log(student mass on the k ids): >= 0,
    and 0 only when the student matches the teacher on the k ids and puts nothing elsewhere.
    With k == V it equals ``kd_kl``. The blank weighting uses the stored (unsoftened) blank
    log-prob; a frame whose top-k lacks the blank counts as not blank."""
    mask = lengths_to_mask(lens, student_log_probs.shape[1])  # (N, T)
    student = _soften(student_log_probs, mask, temperature)  # (N, T, V)
    student_k = student.gather(-1, _masked(topk_idx, mask))  # (N, T, k)
    teacher_k = _soften(topk_logp.detach(), mask, temperature)  # (N, T, k)
    kl = _kl_rows(teacher_k, student_k) * temperature ** 2  # (N, T)
    is_blank = topk_idx == BLANK_ID  # (N, T, k)
    stored = topk_logp.detach().masked_fill(~is_blank, -math.inf)
    blank_logp = _masked(stored.max(dim=-1).values, mask)  # (N, T); -inf where blank not stored
    student_blank = _student_blank(student_log_probs, mask, selection)
    return _weighted_mean(kl, _selection_weights(blank_logp, student_blank, mask, selection,
                                                 blank_weight, blank_threshold, blank_keep))


def _soften(log_probs: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """log_softmax(x / T) over the last axis, (N, T, V); padding frames read as zeros."""
    return F.log_softmax(_masked(log_probs, mask).float() / temperature, dim=-1)


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    """Zero the padding frames of x: (N, T, ...) with mask: (N, T) (True = valid)."""
    return x.masked_fill(~mask.view(*mask.shape, *([1] * (x.dim() - 2))), 0)


def _kl_rows(teacher: Tensor, student: Tensor) -> Tensor:
    """sum_v p_t (log p_t - log p_s) over the last axis: (N, T, V) log-probs -> (N, T). Terms with
    p_t = 0 are 0 (also when log p_t = -inf)."""
    p = teacher.exp()
    terms = torch.where(p > 0, p * (teacher - student), torch.zeros_like(student))
    return terms.sum(dim=-1)


def _frame_weights(blank_logp: Tensor, mask: Tensor, blank_weight: float,
                   blank_threshold: float) -> Tensor:
    """(N, T) frame weights: 0 on padding, ``blank_weight`` where the teacher's blank probability
    exp(blank_logp) >= ``blank_threshold``, 1 elsewhere."""
    weights = torch.where(blank_logp.exp() >= blank_threshold,
                          torch.full_like(blank_logp, blank_weight), torch.ones_like(blank_logp))
    return weights.float() * mask


def _student_blank(student_log_probs: Tensor, mask: Tensor, selection: str) -> Tensor | None:
    """(N, T) the student's unsoftened blank log-probs, detached (symmetric selection only)."""
    if selection != "symmetric":
        return None
    return _masked(student_log_probs.detach().float().log_softmax(-1)[..., BLANK_ID], mask)


def _selection_weights(teacher_blank: Tensor, student_blank: Tensor | None, mask: Tensor,
                       selection: str, blank_weight: float, blank_threshold: float,
                       blank_keep: float) -> Tensor:
    """(N, T) frame weights of a ``selection`` (see ``kd_kl``); 0 on padding."""
    if selection == "down_weight":
        return _frame_weights(teacher_blank, mask, blank_weight, blank_threshold)
    if selection == "none":
        return mask.float()
    if selection == "symmetric":
        keep = blank_selection_mask(teacher_blank, student_blank, mask, blank_threshold, blank_keep)
        return keep.float()
    raise ValueError(f"blank selection must be one of {BLANK_SELECTIONS}, got {selection!r}")


def blank_selection_mask(teacher_blank: Tensor, student_blank: Tensor, mask: Tensor,
                         threshold: float, keep: float) -> Tensor:
    """Symmetric blank selection, (N, T) bool. A valid frame is "blank on both sides" when the
    teacher's and the student's blank probabilities (exp of the (N, T) log-probs) are both
    >= ``threshold``; every other valid frame is kept, and of each utterance's blank-on-both
    frames the 1st, then every round(1 / keep)-th one (a share ``keep`` spread evenly over time,
    deterministic; ``keep`` 0: none)."""
    if not 0 <= keep <= 1:
        raise ValueError(f"blank_keep must be in [0, 1], got {keep}")
    both = (teacher_blank.exp() >= threshold) & (student_blank.exp() >= threshold) & mask
    rank = both.long().cumsum(dim=1) - 1  # (N, T): index among the utterance's blank-on-both frames
    kept_blank = both & (rank % max(round(1 / keep), 1) == 0) if keep > 0 else torch.zeros_like(both)
    return (mask & ~both) | kept_blank


def delay_frames(teacher_log_probs: Tensor, lens: Tensor, delay: int) -> tuple[Tensor, Tensor]:
    """Delayed KD: teacher posteriors (N, T, V) moved ``delay`` frames later, so that the
    student's frame t is matched to the teacher's frame t - delay, and an (N, T) bool mask of the
    frames that keep a target (t >= delay and t < lens). delay 0 returns the input and the length
    mask."""
    if delay < 0:
        raise ValueError(f"kd_delay must be >= 0, got {delay}")
    mask = lengths_to_mask(lens, teacher_log_probs.shape[1])
    if delay == 0:
        return teacher_log_probs, mask
    shifted = torch.zeros_like(teacher_log_probs)
    shifted[:, delay:] = teacher_log_probs[:, :-delay]
    mask[:, :delay] = False
    return shifted, mask


def force_blank_start(log_probs: Tensor, lens: Tensor, target_lens: Tensor, frames: int) -> Tensor:
    """``log_probs`` (N, T, V) with every token but blank impossible (``IMPOSSIBLE``, finite so
    that CTC's gradient stays finite) on each utterance's first ``frames`` frames, fewer where the
    rest could not hold its target (2 S + 1 frames): CTC on the result aligns the whole transcript
    after them. A bidirectional teacher emits the first word's first tokens on frames 0-2, before
    the speech starts; a causal student cut from it keeps guessing them there
    (``loss.blank_start``)."""
    if frames <= 0:
        return log_probs
    room = (lens - 2 * target_lens - 1).clamp(min=0).clamp(max=frames).to(log_probs.device)
    t = torch.arange(log_probs.shape[1], device=log_probs.device)
    start = (t[None, :] < room[:, None]).unsqueeze(-1)  # (N, T, 1)
    token = torch.ones(log_probs.shape[-1], dtype=torch.bool, device=log_probs.device)
    token[BLANK_ID] = False
    return log_probs.masked_fill(start & token, IMPOSSIBLE)


def first_word_end(teacher_log_probs: Tensor, lens: Tensor, boundary_ids: Sequence[int],
                   nth: int = 1) -> Tensor:
    """(N,) the frame of each utterance's ``nth`` spike (argmax) of a word-boundary token (the
    space of a character vocabulary: nth 1; SentencePiece's word-initial pieces: nth 2), or its
    length when there is none: where the teacher's first word ends."""
    best = teacher_log_probs.argmax(-1)  # (N, T)
    valid = lengths_to_mask(lens, best.shape[1])
    spikes = torch.isin(best, torch.tensor(list(boundary_ids), device=best.device)) & valid
    reached = spikes.long().cumsum(dim=1) >= nth
    frame = reached.long().argmax(dim=1)  # the first frame where the count reaches nth
    return torch.where(reached.any(dim=1), frame, lens.to(frame.device))


def spike_delay(teacher_log_probs: Tensor, student_log_probs: Tensor, lens: Tensor,
                max_delay: int) -> tuple[int, list[int]]:
    """The shift d in [0, max_delay] at which a (causal) student's spikes best follow the
    teacher's: for each d, the number of frames t where the teacher's argmax at t is a non-blank
    token and the student's argmax at t + d (< lens) is the same token. Both (N, T, V) on the
    same frames, lens: (N,). Returns (best d, agreement per d); ties go to the smaller d."""
    t_best, s_best = teacher_log_probs.argmax(-1), student_log_probs.argmax(-1)  # (N, T)
    valid = lengths_to_mask(lens, t_best.shape[1])
    counts = []
    for d in range(max_delay + 1):
        n = t_best.shape[1] - d
        if n <= 0:
            counts.append(0)
            continue
        hit = (t_best[:, :n] != BLANK_ID) & (t_best[:, :n] == s_best[:, d:]) & valid[:, d:]
        counts.append(int(hit.sum()))
    return max(range(len(counts)), key=lambda d: (counts[d], -d)), counts


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """sum(w * v) / sum(w) over (N, T); 0 (with a graph) when every weight is 0."""
    total = (values * weights).sum()
    return total / weights.sum().clamp(min=torch.finfo(total.dtype).tiny)


# ---------------------------------------------------------------------------------------------
# Frame-rate alignment


def align_time(x: Tensor, src_lens: Tensor, tgt_lens: Tensor, T_tgt: int) -> Tensor:
    """(N, T_src, D) -> (N, T_tgt, D): utterance n's ``src_lens[n]`` valid frames resampled to
    ``tgt_lens[n]`` frames by overlap-weighted averaging (see the module docstring: average
    pooling when the source is finer, repetition when coarser); padding frames are 0."""
    weights = _overlap_matrix(src_lens, tgt_lens, x.shape[1], T_tgt).to(x)  # (N, T_tgt, T_src)
    valid = lengths_to_mask(src_lens.to(x.device), x.shape[1])  # (N, T_src)
    return torch.bmm(weights, _masked(x, valid))


def align_log_probs(log_probs: Tensor, src_lens: Tensor, tgt_lens: Tensor, T_tgt: int) -> Tensor:
    """Log posteriors (N, T_src, V) -> (N, T_tgt, V) via probabilities: exp -> ``align_time`` ->
    renormalise -> log. Padding frames are 0; valid rows are log-distributions."""
    valid = lengths_to_mask(src_lens.to(log_probs.device), log_probs.shape[1])
    probs = align_time(_masked(log_probs, valid).exp(), src_lens, tgt_lens, T_tgt)
    tiny = torch.finfo(probs.dtype).tiny
    probs = probs / probs.sum(dim=-1, keepdim=True).clamp(min=tiny)
    out_valid = lengths_to_mask(tgt_lens.to(log_probs.device), T_tgt)
    return _masked(probs.clamp(min=tiny).log(), out_valid)


def _overlap_matrix(src_lens: Tensor, tgt_lens: Tensor, T_src: int, T_tgt: int) -> Tensor:
    """(N, T_tgt, T_src) float64: entry (n, j, i) = overlap of target frame j's span
    [j r, (j + 1) r) with source frame [i, i + 1), divided by r = src_lens[n] / tgt_lens[n].
    Rows j < tgt_lens[n] sum to 1 (when src_lens[n] > 0); other rows are 0."""
    src = src_lens.detach().double().cpu()[:, None, None]  # (N, 1, 1)
    tgt = tgt_lens.detach().double().cpu()[:, None, None]
    ratio = src / tgt.clamp(min=1)
    j = torch.arange(T_tgt, dtype=torch.float64)[None, :, None]  # (1, T_tgt, 1)
    i = torch.arange(T_src, dtype=torch.float64)[None, None, :]  # (1, 1, T_src)
    start, end = j * ratio, (j + 1) * ratio  # (N, T_tgt, 1)
    overlap = (torch.minimum(end, i + 1) - torch.maximum(start, i)).clamp(min=0)
    weights = overlap / ratio.clamp(min=torch.finfo(torch.float64).tiny)
    return (weights * (j < tgt)).to(src_lens.device)


# ---------------------------------------------------------------------------------------------
# Hidden-layer matching


class HiddenProjector(nn.Module):
    """One ``Linear(student_dim -> teacher_dim)`` per matched layer pair.
    ``forward(hs)``: list of (N, T, student_dim) -> list of (N, T, teacher_dim)."""

    def __init__(self, pairs: Sequence[tuple[int, int]]):
        super().__init__()
        self.pairs = [(int(s), int(t)) for s, t in pairs]
        self.proj = nn.ModuleList(nn.Linear(s, t) for s, t in self.pairs)

    def identity_(self) -> "HiddenProjector":
        """Every projection set to the identity (each pair's dims must be equal): a student with the
        teacher's architecture starts matched, its hidden loss 0 when its states are the teacher's."""
        uneven = [pair for pair in self.pairs if pair[0] != pair[1]]
        if uneven:
            raise ValueError(f"an identity projection needs equal dims, got (student, teacher) {uneven}")
        with torch.no_grad():
            for proj in self.proj:
                proj.weight.copy_(torch.eye(proj.in_features))
                proj.bias.zero_()
        return self

    def forward(self, hs: Sequence[Tensor]) -> list[Tensor]:
        if len(hs) != len(self.proj):
            raise ValueError(f"expected {len(self.proj)} hidden states, got {len(hs)}")
        return [proj(h) for proj, h in zip(self.proj, hs)]


def hidden_loss(student_h: Tensor, teacher_h: Tensor, lens: Tensor, kind: str = "l1_cos",
                cos_weight: float = 1.0) -> Tensor:
    """Match a projected student layer to a teacher layer. student_h, teacher_h: (N, T, D) on the
    same frames (``align_time`` first if rates differ), lens: (N,).

    - "l1_cos" (DistilHuBERT): mean |s - t| over valid frames and dims, plus ``cos_weight`` *
      mean over valid frames of -log(sigmoid(cos(s, t))), shifted by its minimum log(1 + e^-1)
      so that identical inputs score 0 (gradients as DistilHuBERT's).
    - "mse": mean (s - t)^2 over valid frames and dims."""
    if kind not in HIDDEN_KINDS:
        raise ValueError(f"hidden loss kind must be one of {HIDDEN_KINDS}, got {kind!r}")
    if student_h.shape != teacher_h.shape:
        raise ValueError(f"student {tuple(student_h.shape)} and teacher {tuple(teacher_h.shape)} "
                         "hidden states differ in shape")
    mask = lengths_to_mask(lens, student_h.shape[1])  # (N, T)
    s, t = _masked(student_h, mask).float(), _masked(teacher_h.detach(), mask).float()
    frames = mask.sum().clamp(min=1)
    if kind == "mse":
        return (s - t).pow(2).sum() / (frames * s.shape[-1])
    l1 = (s - t).abs().sum() / (frames * s.shape[-1])
    cos_term = -F.logsigmoid(F.cosine_similarity(s, t, dim=-1)) - _MIN_LOGSIG_COS  # (N, T)
    return l1 + cos_weight * (cos_term * mask).sum() / frames


# ---------------------------------------------------------------------------------------------
# Pseudo-label filter


def pseudo_label_keep(hyps: Sequence[str], refs: Sequence[str | None],
                      max_wer: float) -> list[bool]:
    """Distil-Whisper's filter on teacher transcripts. ``max_wer`` is a fraction (0.1 = 10 %).
    Keep utterance i when its hypothesis is not empty and either ``refs[i]`` is None (unlabelled
    audio) or WER(refs[i], hyps[i]) <= max_wer (jiwer, words split on whitespace; normalise both
    texts beforehand)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if max_wer < 0:
        raise ValueError(f"max_wer must be >= 0, got {max_wer}")
    return [_keep_one(hyp, ref, max_wer) for hyp, ref in zip(hyps, refs)]


def _keep_one(hyp: str, ref: str | None, max_wer: float) -> bool:
    if not hyp.strip():
        return False
    if ref is None:
        return True
    if not ref.strip():  # nothing to compare with: every hypothesis word is an insertion
        return False
    return jiwer.wer(ref, hyp) <= max_wer
