"""The student cut from the teacher: student.causal makes a bidirectional CRNN's cut streamable."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from slimasr.distill.config import load_distill_recipe
from slimasr.distill.run import _make_student
from slimasr.distill.student import student_from_teacher
from slimasr.errors import ConfigError
from slimasr.models import build_model, load_model, save_model
from slimasr.prune.importance import magnitude_scores
from slimasr.prune.surgery import select_layers

VOCAB = 7
FEATURES = 16


def tiny_crnn(rnn_type: str = "lstm", bidirectional: bool = True, causal: bool | None = None,
              sizes: tuple[int, ...] = (16, 16, 16)) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("crnn", {
        "num_features": FEATURES, "subsampling_channels": [4, 4], "rnn_type": rnn_type,
        "rnn_hidden_sizes": list(sizes), "bidirectional": bidirectional, "causal": causal,
        "rnn_dropout": 0.0}, vocab_size=VOCAB)
    for norm in model.subsample.norms:  # running statistics that are not the defaults
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 1.5)
    return model.eval()


def gate_rows(units: list[int], hidden: int, gates: int) -> list[int]:
    return [g * hidden + j for g in range(gates) for j in units]


def kept_units(teacher: torch.nn.Module, layers: list[int], n: int) -> dict[str, list[int]]:
    """The rnn units of largest magnitude after the layer selection (what width keeps)."""
    scores = magnitude_scores(select_layers(teacher, layers))
    return {name: sorted(s.argsort(descending=True, stable=True)[:n].tolist())
            for name, s in scores.items() if name.startswith("rnns.")}


def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x, torch.tensor([x.shape[1]] * x.shape[0]))[0]


@pytest.mark.parametrize("rnn_type,gates", [("lstm", 4), ("gru", 3)])
def test_causal_student_keeps_the_teachers_forward_weights(rnn_type, gates) -> None:
    teacher = tiny_crnn(rnn_type)
    # 2 of 3 layers (teacher layers 0 and 2), half of 16 units; round_to 4 keeps the 4 channels
    student = student_from_teacher(teacher, layers=2, width=0.5, round_to=4, causal=True)
    cfg = student.config
    assert (cfg.bidirectional, cfg.causal, cfg.rnn_hidden_sizes) == (False, True, [8, 8])
    assert cfg.subsampling_channels == [4, 4] and student.streaming_problem() is None
    assert all(layer.bwd is None for layer in student.rnns)
    assert student.training  # like every created student

    k = kept_units(teacher, [0, 2], 8)
    k0, k1 = k["rnns.0"], k["rnns.1"]  # student layer 1 is teacher layer 2
    s0, s1 = student.rnns[0].fwd, student.rnns[1].fwd
    t0, t2 = teacher.rnns[0].fwd, teacher.rnns[2].fwd
    r0, r1 = gate_rows(k0, 16, gates), gate_rows(k1, 16, gates)
    # layer 0 reads the conv output (all of it: every channel kept)
    assert torch.equal(s0.weight_ih_l0, t0.weight_ih_l0[r0])
    assert torch.equal(s0.weight_hh_l0, t0.weight_hh_l0[r0][:, k0])
    assert torch.equal(s0.bias_ih_l0, t0.bias_ih_l0[r0])
    assert torch.equal(s0.bias_hh_l0, t0.bias_hh_l0[r0])
    # layer 1 reads only layer 0's forward outputs: columns j < 16 of [forward | backward]
    assert torch.equal(s1.weight_ih_l0, t2.weight_ih_l0[r1][:, k0])
    assert torch.equal(s1.weight_hh_l0, t2.weight_hh_l0[r1][:, k1])
    assert torch.equal(s1.bias_hh_l0, t2.bias_hh_l0[r1])
    assert torch.equal(student.head.weight, teacher.head.weight[:, k1])
    assert torch.equal(student.head.bias, teacher.head.bias)
    # convs and norms as they are (causal padding changes no shape)
    s_sub, t_sub = student.subsample.state_dict(), teacher.subsample.state_dict()
    assert s_sub.keys() == t_sub.keys() and all(torch.equal(s_sub[n], t_sub[n]) for n in s_sub)

    d = student.subsample.out_dim
    rnn = gates * 8 * (d + 8) + 2 * gates * 8 + gates * 8 * (8 + 8) + 2 * gates * 8
    convs = sum(p.numel() for p in teacher.subsample.parameters())
    assert sum(p.numel() for p in student.parameters()) == convs + rnn + VOCAB * 8 + VOCAB


def test_causal_student_sees_no_future_frames() -> None:
    teacher = tiny_crnn()
    student = student_from_teacher(teacher, layers=2, width=0.5, round_to=4, causal=True)
    torch.manual_seed(1)
    x = torch.randn(2, 40, FEATURES)
    changed = x.clone()
    changed[:, 21:] = torch.randn(2, 19, FEATURES)  # input frames 21.. changed
    keep = 11  # output frame j (subsampling 2) sees input frames <= 2j: frames 0..10 unchanged
    y, y2 = run(student, x), run(student, changed)
    torch.testing.assert_close(y2[:, :keep], y[:, :keep], rtol=0, atol=1e-6)
    assert not torch.allclose(y2[:, keep:], y[:, keep:])
    # the teacher (bidirectional, centred convs) does look ahead: the check can tell
    t, t2 = run(teacher, x), run(teacher, changed)
    assert not torch.allclose(t2[:, :keep], t[:, :keep])
    # and it streams: chunks give forward's frames
    with torch.no_grad():
        state, chunks = student.init_stream(2), []
        for start in range(0, 40, 8):
            out, state = student.forward_chunk(x[:, start:start + 8], state)
            chunks.append(out)
    torch.testing.assert_close(torch.cat(chunks, dim=1), y, rtol=1e-5, atol=1e-5)


def test_causal_student_saves_and_reloads(tmp_path) -> None:
    student = student_from_teacher(tiny_crnn(), layers=2, width=0.5, round_to=4, causal=True)
    save_model(student, tmp_path / "s")
    again = load_model(tmp_path / "s")
    assert again.config.bidirectional is False and again.config.causal is True
    assert again.config.rnn_hidden_sizes == [8, 8]
    x = torch.randn(1, 24, FEATURES)
    torch.testing.assert_close(run(again, x), run(student, x))


def test_causal_cut_of_a_unidirectional_teacher_is_the_ordinary_cut_with_causal_convs() -> None:
    # already unidirectional: accepted; only the convs' padding becomes causal
    teacher = tiny_crnn(bidirectional=False, causal=False)
    plain = student_from_teacher(teacher, layers=2, width=0.5, round_to=4)
    causal = student_from_teacher(teacher, layers=2, width=0.5, round_to=4, causal=True)
    assert (plain.config.causal, causal.config.causal) == (False, True)
    p, c = plain.state_dict(), causal.state_dict()
    assert p.keys() == c.keys() and all(torch.equal(p[n], c[n]) for n in p)


def test_make_student_passes_causal_through() -> None:
    recipe = load_distill_recipe({"student": {"init": "teacher", "causal": True}},
                                 ["student.width=0.5", "student.round_to=4"])
    student = _make_student(recipe, SimpleNamespace(model=tiny_crnn(sizes=(16, 16))), VOCAB)
    assert student.config.bidirectional is False and student.config.rnn_hidden_sizes == [8, 8]


def test_causal_refusals() -> None:
    dnn = build_model("dnn", {"num_features": FEATURES, "hidden_sizes": [16, 16]}, vocab_size=VOCAB)
    with pytest.raises(ConfigError, match="needs a CRNN teacher") as e:
        student_from_teacher(dnn, layers=None, width=0.5, round_to=4, causal=True)
    assert "\n" not in str(e.value)
    for student in ({"init": "scratch", "causal": True},
                    {"init": "path", "path": "exp/pruned", "causal": True}):
        with pytest.raises(ConfigError, match="only with student.init=teacher") as e:
            load_distill_recipe({"student": student})
        assert "\n" not in str(e.value)
    # the default stays as it was: no causal student, no refusal
    assert load_distill_recipe({"student": {"init": "scratch"}}).student.causal is False
