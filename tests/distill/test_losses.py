"""Distillation losses: exact values on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from slimasr.distill.losses import (
    HiddenProjector,
    align_log_probs,
    align_time,
    ctc_term,
    hidden_loss,
    kd_kl,
    kd_kl_topk,
    pseudo_label_keep,
)
from slimasr.train.loop import ctc_loss, reduce_loss


def _logp(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).log_softmax(-1)


def _kl_by_hand(t_logits: list[float], s_logits: list[float], temp: float) -> float:
    """T^2 * sum p_t log(p_t / p_s) for one frame, in plain Python."""
    def softmax(z: list[float]) -> list[float]:
        e = [math.exp(v / temp) for v in z]
        return [v / sum(e) for v in e]
    p, q = softmax(t_logits), softmax(s_logits)
    return temp ** 2 * sum(a * math.log(a / b) for a, b in zip(p, q))


# ---------------------------------------------------------------------------------------------
# CTC


def _ctc_batch() -> tuple[torch.Tensor, ...]:
    log_probs = _logp(3, 8, 5).requires_grad_()
    out_lens = torch.tensor([8, 6, 7])
    targets = torch.tensor([[1, 2, 3], [4, 4, 0], [2, 0, 0]])
    target_lens = torch.tensor([3, 2, 1])
    return log_probs, out_lens, targets, target_lens


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ctc_term_matches_training_loss_and_unit_weights(reduction: str) -> None:
    log_probs, out_lens, targets, target_lens = _ctc_batch()
    expected = reduce_loss(ctc_loss(log_probs, out_lens, targets, target_lens), target_lens,
                           reduction)
    plain = ctc_term(log_probs, out_lens, targets, target_lens, reduction)
    ones = ctc_term(log_probs, out_lens, targets, target_lens, reduction, weights=torch.ones(3))
    assert torch.allclose(plain, expected) and torch.allclose(ones, expected)


def test_ctc_term_weights() -> None:
    log_probs, out_lens, targets, target_lens = _ctc_batch()
    per_utt = ctc_loss(log_probs, out_lens, targets, target_lens) / target_lens
    got = ctc_term(log_probs, out_lens, targets, target_lens, weights=torch.tensor([2.0, 0.0, 1.0]))
    assert torch.allclose(got, (2 * per_utt[0] + per_utt[2]) / 3)
    zero = ctc_term(log_probs, out_lens, targets, target_lens, weights=torch.zeros(3))
    assert zero.item() == 0.0
    zero.backward()
    assert log_probs.grad is not None and log_probs.grad.abs().sum() == 0


# ---------------------------------------------------------------------------------------------
# Frame-level KD


def test_kd_kl_zero_for_identical_positive_otherwise() -> None:
    teacher, lens = _logp(2, 5, 6, seed=1), torch.tensor([5, 3])
    assert kd_kl(teacher.clone(), teacher, lens, 2.0).abs().item() < 1e-6
    assert kd_kl(_logp(2, 5, 6, seed=2), teacher, lens, 2.0).item() > 0.01


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_kd_kl_hand_computed_with_t_squared(temp: float) -> None:
    t_logits, s_logits = [2.0, 0.5, -1.0], [0.0, 1.0, 0.3]
    teacher = torch.tensor([[t_logits]]).log_softmax(-1)  # (1, 1, 3)
    student = torch.tensor([[s_logits]]).log_softmax(-1)
    got = kd_kl(student, teacher, torch.tensor([1]), temp, blank_threshold=1.1)
    assert got.item() == pytest.approx(_kl_by_hand(t_logits, s_logits, temp), rel=1e-5)


def test_kd_kl_ignores_padding_and_teacher_gets_no_grad() -> None:
    student, teacher = _logp(2, 6, 4, seed=3), _logp(2, 6, 4, seed=4)
    lens = torch.tensor([6, 3])
    base = kd_kl(student, teacher, lens, 2.0, blank_weight=0.5)
    student2, teacher2 = student.clone().requires_grad_(), teacher.clone().requires_grad_()
    with torch.no_grad():
        student2[1, 3:] = float("nan")
        teacher2[1, 3:] = 123.0
    changed = kd_kl(student2, teacher2, lens, 2.0, blank_weight=0.5)
    assert torch.allclose(base, changed)
    changed.backward()
    assert torch.isfinite(student2.grad).all() and student2.grad[1, 3:].abs().sum() == 0
    assert teacher2.grad is None


def test_kd_kl_blank_weight_two_frames() -> None:
    # frame 0: teacher blank prob 0.95 (>= 0.9), frame 1: 0.1
    teacher = torch.tensor([[[0.95, 0.03, 0.02], [0.1, 0.6, 0.3]]]).log()
    student = torch.tensor([[[0.5, 0.3, 0.2], [0.3, 0.3, 0.4]]]).log()
    one = torch.tensor([1])
    kl0 = kd_kl(student[:, :1], teacher[:, :1], one, 1.0)
    kl1 = kd_kl(student[:, 1:], teacher[:, 1:], one, 1.0)
    got = kd_kl(student, teacher, torch.tensor([2]), 1.0, blank_weight=0.25, blank_threshold=0.9)
    assert got.item() == pytest.approx((0.25 * kl0 + kl1).item() / 1.25, rel=1e-6)
    # the threshold is on the unsoftened probability (softened by T = 3, frame 0's is ~0.6)
    at = kd_kl(student, teacher, torch.tensor([2]), 3.0, blank_weight=0.0, blank_threshold=0.949)
    kl1_t3 = kd_kl(student[:, 1:], teacher[:, 1:], one, 3.0)
    assert at.item() == pytest.approx(kl1_t3.item(), rel=1e-6)


def test_kd_kl_topk_with_k_equal_v_equals_full() -> None:
    student, teacher = _logp(2, 5, 7, seed=5), _logp(2, 5, 7, seed=6)
    teacher[0, 1] = torch.tensor([0.97, 0.01, 0.01, 0.01, 0, 0, 0]).clamp(min=1e-9).log()
    lens = torch.tensor([5, 4])
    topk_logp, topk_idx = teacher.topk(7, dim=-1)
    for temp, bw in [(1.0, 1.0), (2.0, 0.3)]:
        full = kd_kl(student, teacher, lens, temp, blank_weight=bw, blank_threshold=0.9)
        top = kd_kl_topk(student, topk_logp, topk_idx, lens, temp, bw, 0.9)
        assert torch.allclose(full, top, atol=1e-6)


def test_kd_kl_topk_small_k() -> None:
    student, teacher = _logp(1, 3, 6, seed=7), _logp(1, 3, 6, seed=8)
    topk_logp, topk_idx = teacher.topk(2, dim=-1)
    lens = torch.tensor([3])
    assert kd_kl_topk(student, topk_logp, topk_idx, lens, 2.0).item() > 0
    # a student equal to the renormalised top-2 teacher scores 0
    target = torch.full_like(teacher, -1e4).scatter(-1, topk_idx, topk_logp).log_softmax(-1)
    assert kd_kl_topk(target, topk_logp, topk_idx, lens, 1.0).abs().item() < 1e-6


# ---------------------------------------------------------------------------------------------
# Frame-rate alignment


def test_align_time_pools_finer_source() -> None:
    x = torch.arange(1.0, 9.0).view(1, 8, 1).repeat(2, 1, 2)  # frames 1..8, D = 2
    out = align_time(x, torch.tensor([8, 6]), torch.tensor([4, 3]), 4)
    assert out[0, :, 0].tolist() == [1.5, 3.5, 5.5, 7.5]
    assert out[1, :, 1].tolist() == [1.5, 3.5, 5.5, 0.0]  # frames 7, 8 were padding


def test_align_time_repeats_coarser_source() -> None:
    x = torch.tensor([[[1.0], [2.0], [9.0]], [[3.0], [4.0], [5.0]]])
    out = align_time(x, torch.tensor([2, 3]), torch.tensor([4, 6]), 6)
    assert out[0, :, 0].tolist() == [1.0, 1.0, 2.0, 2.0, 0.0, 0.0]
    assert out[1, :, 0].tolist() == [3.0, 3.0, 4.0, 4.0, 5.0, 5.0]


def test_align_time_non_integer_ratio_and_log_probs() -> None:
    x = torch.tensor([[[1.0], [2.0], [4.0]]])
    out = align_time(x, torch.tensor([3]), torch.tensor([2]), 2)
    assert out[0, :, 0].tolist() == pytest.approx([(1 + 0.5 * 2) / 1.5, (0.5 * 2 + 4) / 1.5])
    logp = _logp(2, 3, 5, seed=9)
    for src, tgt, t_tgt in [([3, 2], [2, 2], 2), ([2, 3], [3, 5], 5)]:
        out = align_log_probs(logp, torch.tensor(src), torch.tensor(tgt), t_tgt)
        assert out.shape == (2, t_tgt, 5)
        for n in range(2):
            assert torch.allclose(out[n, :tgt[n]].exp().sum(-1), torch.ones(tgt[n]))
            assert (out[n, tgt[n]:] == 0).all()


def test_align_log_probs_exact_pairs() -> None:
    probs = torch.tensor([[[0.5, 0.5], [0.1, 0.9], [1.0, 0.0], [0.2, 0.8]]])
    out = align_log_probs(probs.log(), torch.tensor([4]), torch.tensor([2]), 2).exp()
    assert torch.allclose(out, torch.tensor([[[0.3, 0.7], [0.6, 0.4]]]))


# ---------------------------------------------------------------------------------------------
# Hidden-layer matching


@pytest.mark.parametrize("kind", ["l1_cos", "mse"])
def test_hidden_loss_zero_identical_positive_otherwise(kind: str) -> None:
    gen = torch.Generator().manual_seed(10)
    teacher = torch.randn(2, 5, 6, generator=gen)
    lens = torch.tensor([5, 2])
    assert hidden_loss(teacher.clone(), teacher, lens, kind).abs().item() < 1e-6
    other = teacher.clone()
    other[1, 2:] = 100.0  # padding only
    assert hidden_loss(other, teacher, lens, kind).abs().item() < 1e-6
    assert hidden_loss(teacher + 0.5, teacher, lens, kind).item() > 0.1


def test_hidden_loss_values() -> None:
    s = torch.tensor([[[1.0, 0.0], [2.0, 2.0], [7.0, 7.0]]])
    t = torch.tensor([[[0.0, 1.0], [2.0, 2.0], [0.0, 0.0]]])
    lens = torch.tensor([2])
    assert hidden_loss(s, t, lens, "mse").item() == pytest.approx(2 / 4)
    cos = -math.log(1 / (1 + math.exp(0))) - math.log1p(math.exp(-1))  # frame 0: cos = 0
    got = hidden_loss(s, t, lens, "l1_cos", cos_weight=2.0)
    assert got.item() == pytest.approx(2 / 4 + 2.0 * cos / 2, rel=1e-6)


def test_projector_shapes_and_grads() -> None:
    proj = HiddenProjector([(4, 6), (3, 8)])
    gen = torch.Generator().manual_seed(11)
    hs = [torch.randn(2, 5, 4, generator=gen), torch.randn(2, 5, 3, generator=gen)]
    out = proj(hs)
    assert [tuple(h.shape) for h in out] == [(2, 5, 6), (2, 5, 8)]
    teachers = [torch.randn(2, 5, 6, generator=gen), torch.randn(2, 5, 8, generator=gen)]
    lens = torch.tensor([5, 3])
    loss = sum(hidden_loss(s, t, lens, "l1_cos") for s, t in zip(out, teachers))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())
    with pytest.raises(ValueError, match="hidden loss kind"):
        hidden_loss(out[0], teachers[0], lens, "cosine")


def test_identity_projector_passes_states_through_and_refuses_uneven_dims() -> None:
    proj = HiddenProjector([(4, 4), (3, 3)]).identity_()
    gen = torch.Generator().manual_seed(3)
    hs = [torch.randn(2, 5, 4, generator=gen), torch.randn(2, 5, 3, generator=gen)]
    assert all(torch.equal(out, h) for out, h in zip(proj(hs), hs))
    lens = torch.tensor([5, 2])
    assert all(hidden_loss(out, h, lens).item() == pytest.approx(0.0, abs=1e-6) for out, h in zip(proj(hs), hs))
    assert all(p.requires_grad for p in proj.parameters())  # still learned
    with pytest.raises(ValueError, match=r"equal dims.*\(4, 6\)"):
        HiddenProjector([(4, 4), (4, 6)]).identity_()


# ---------------------------------------------------------------------------------------------
# Pseudo-label filter


def test_pseudo_label_keep() -> None:
    hyps = ["turn on the light", "turn on the light", "turn off a light", "turn on the lamp",
            "", "x"]
    refs = [None, "turn on the light", "turn on the light", "turn on the light", None, ""]
    assert pseudo_label_keep(hyps, refs, max_wer=0.25) == [True, True, False, True, False, False]
    assert pseudo_label_keep(hyps[:4], refs[:4], max_wer=0.0) == [True, True, False, False]
    assert pseudo_label_keep(hyps[:4], refs[:4], max_wer=0.5) == [True, True, True, True]
    with pytest.raises(ValueError):
        pseudo_label_keep(["a"], [], 0.1)


def test_functions_are_consistent_with_torch_kl_div() -> None:
    student, teacher = _logp(3, 4, 5, seed=12), _logp(3, 4, 5, seed=13)
    lens = torch.tensor([4, 4, 4])
    ref = F.kl_div(student, teacher, log_target=True, reduction="sum") / 12
    assert torch.allclose(kd_kl(student, teacher, lens, 1.0, blank_threshold=1.1), ref, atol=1e-6)


# ---- delayed KD and symmetric blank selection -----------------------------------------------


def _onehot_logp(tokens: list[list[int]], v: int = 4, p: float = 0.97) -> torch.Tensor:
    """(N, T, v) log-posteriors putting p on the given token of each frame, the rest evenly."""
    out = torch.full((len(tokens), len(tokens[0]), v), (1 - p) / (v - 1))
    for n, row in enumerate(tokens):
        for t, tok in enumerate(row):
            out[n, t, tok] = p
    return out.log()


def test_delay_frames_shifts_the_teacher_later_and_masks_the_first_frames() -> None:
    from slimasr.distill.losses import delay_frames

    teacher = torch.arange(2 * 5 * 1, dtype=torch.float32).view(2, 5, 1)
    shifted, mask = delay_frames(teacher, torch.tensor([5, 3]), 2)
    assert shifted[:, :, 0].tolist() == [[0, 0, 0, 1, 2], [0, 0, 5, 6, 7]]
    assert mask.tolist() == [[False, False, True, True, True], [False, False, True, False, False]]
    same, full = delay_frames(teacher, torch.tensor([5, 3]), 0)
    assert same is teacher and full.sum().item() == 8


def test_force_blank_start_leaves_only_blank_on_the_first_frames_where_the_target_fits() -> None:
    from slimasr.distill.losses import IMPOSSIBLE, force_blank_start
    from slimasr.train.loop import ctc_loss

    logp = torch.log_softmax(torch.randn(2, 10, 4), dim=-1)
    lens, target_lens = torch.tensor([10, 10]), torch.tensor([2, 4])
    forced = force_blank_start(logp, lens, target_lens, 3)
    # utterance 0: 3 frames; utterance 1 has room for 10 - 2 * 4 - 1 = 1 only
    assert (forced[0, :3, 1:] == IMPOSSIBLE).all() and torch.equal(forced[0, 3:], logp[0, 3:])
    assert (forced[1, :1, 1:] == IMPOSSIBLE).all() and torch.equal(forced[1, 1:], logp[1, 1:])
    assert torch.equal(forced[..., 0], logp[..., 0]) and force_blank_start(logp, lens, target_lens, 0) is logp
    # a student that emits its tokens at once pays for it; one that waits does not
    early, late = torch.full((1, 10, 4), -20.0), torch.full((1, 10, 4), -20.0)
    early[0, :, 0] = late[0, :, 0] = 0.0
    early[0, 0, 1], early[0, 1, 2], late[0, 4, 1], late[0, 5, 2] = 0.0, 0.0, 0.0, 0.0
    targets, one, ten = torch.tensor([[1, 2]]), torch.tensor([2]), torch.tensor([10])
    assert ctc_loss(early, ten, targets, one) < 1.0  # unforced: the early alignment is fine
    assert ctc_loss(force_blank_start(early, ten, one, 3), ten, targets, one) > 10.0
    assert torch.allclose(ctc_loss(force_blank_start(late, ten, one, 3), ten, targets, one),
                          ctc_loss(late, ten, targets, one))
    scores = torch.randn(1, 10, 4, requires_grad=True)  # and the gradient stays finite
    ctc_loss(force_blank_start(torch.log_softmax(scores, -1), ten, one, 3), ten, targets, one).sum().backward()
    assert torch.isfinite(scores.grad).all() and scores.grad[0, :3, 0].abs().sum() > 0


def test_first_word_end_is_the_nth_boundary_spike_or_the_length() -> None:
    from slimasr.distill.losses import first_word_end

    space = 1
    teacher = _onehot_logp([[2, 3, 0, 1, 0, 2, 1, 0], [0, 2, 0, 3, 0, 0, 1, 1], [2, 0, 3, 0, 0, 0, 0, 0]])
    lens = torch.tensor([8, 6, 8])  # the second utterance's space (frame 6) is padding
    assert first_word_end(teacher, lens, [space]).tolist() == [3, 6, 8]  # no space: the whole utterance
    # SentencePiece: the word-initial pieces 2 and 3; the second one ends the first word
    assert first_word_end(teacher, lens, [2, 3], nth=2).tolist() == [1, 3, 2]


def test_kd_with_delay_is_zero_for_a_student_exactly_d_frames_late() -> None:
    from slimasr.distill.losses import delay_frames

    teacher = _onehot_logp([[1, 0, 2, 0, 0, 3, 0, 0]])
    student = _onehot_logp([[0, 0, 1, 0, 2, 0, 0, 3]])  # the same spikes, 2 frames later
    lens = torch.tensor([8])
    assert kd_kl(student, teacher, lens, 1.0).item() > 0.1
    shifted, mask = delay_frames(teacher, lens, 2)
    assert kd_kl(student, shifted, lens, 1.0, frame_mask=mask).abs().item() < 1e-6


def test_spike_delay_finds_the_students_lag_exactly() -> None:
    from slimasr.distill.losses import spike_delay

    teacher = _onehot_logp([[1, 0, 2, 0, 0, 3, 0, 0], [2, 0, 0, 1, 0, 0, 0, 0]])
    student = _onehot_logp([[0, 0, 1, 0, 2, 0, 0, 3], [0, 0, 2, 0, 0, 1, 0, 0]])
    best, counts = spike_delay(teacher, student, torch.tensor([8, 8]), 4)
    assert best == 2
    # only d = 2 matches the spikes: 3 of the first utterance, 2 of the second
    assert counts == [0, 0, 5, 0, 0]
    # a spike moved past the utterance's end does not count
    best, counts = spike_delay(teacher, student, torch.tensor([8, 4]), 4)
    assert (best, counts) == (2, [0, 0, 4, 0, 0])


def test_symmetric_blank_selection_keeps_non_blank_and_a_share_of_shared_blanks() -> None:
    from slimasr.distill.losses import blank_selection_mask

    # teacher blank at frames 0-5, student blank at 1-6 -> blank on both sides: 1, 2, 3, 4, 5
    t_blank = torch.tensor([[0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.1, 0.1]]).log()
    s_blank = torch.tensor([[0.5, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.1]]).log()
    mask = torch.tensor([[True] * 7 + [False]])
    keep_half = blank_selection_mask(t_blank, s_blank, mask, 0.9, 0.5)
    # shared blanks 1..5 ranked 0..4: every 2nd kept (ranks 0, 2, 4 = frames 1, 3, 5); padding out
    assert keep_half.int().tolist() == [[1, 1, 0, 1, 0, 1, 1, 0]]
    assert blank_selection_mask(t_blank, s_blank, mask, 0.9, 0.0).int().tolist() == [[1, 0, 0, 0, 0, 0, 1, 0]]
    assert blank_selection_mask(t_blank, s_blank, mask, 0.9, 1.0).int().tolist() == [[1] * 7 + [0]]


def test_kd_kl_symmetric_selection_averages_only_the_selected_frames() -> None:
    teacher = _onehot_logp([[0, 0, 1, 0]])  # blank, blank, token 1, blank
    student = _onehot_logp([[0, 2, 1, 3]], p=0.95)  # blank only at frame 0
    lens, one = torch.tensor([4]), torch.tensor([1])
    # frame 0 is blank on both sides and dropped (keep 0): the mean of frames 1, 2, 3
    expected = sum(kd_kl(student[:, t:t + 1], teacher[:, t:t + 1], one, 2.0) for t in (1, 2, 3)) / 3
    got = kd_kl(student, teacher, lens, 2.0, selection="symmetric", blank_keep=0.0)
    torch.testing.assert_close(got, expected)
    none = kd_kl(student, teacher, lens, 2.0, blank_weight=0.0, selection="none")
    torch.testing.assert_close(none, kd_kl(student, teacher, lens, 2.0))
    with pytest.raises(ValueError, match="blank selection"):
        kd_kl(student, teacher, lens, 2.0, selection="both")
