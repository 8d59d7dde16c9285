"""Contract tests run on every family: shapes, length bookkeeping, padding invariance, causality."""

from __future__ import annotations

import pytest
import torch

from slimasr.models import build_model
from slimasr.models.common import reverse_padded

FEATS = 8  # tiny feature dim
VOCAB = 7  # blank + 6 tokens

TINY = {
    "dnn": ("dnn", dict(num_features=FEATS, context_left=2, context_right=1, stride=2,
                        hidden_sizes=[16, 12], dropout=0.0)),
    "dnn_stride3": ("dnn", dict(num_features=FEATS, context_left=0, context_right=3, stride=3,
                                hidden_sizes=[10], dropout=0.0)),
    "crnn_bilstm_x2": ("crnn", dict(num_features=FEATS, subsampling_channels=[3, 4],
                                    subsampling_strides=[[2, 2], [1, 2]], rnn_hidden_sizes=[6, 5])),
    "crnn_bigru_x4": ("crnn", dict(num_features=FEATS, subsampling_channels=[3, 4], rnn_type="gru",
                                   subsampling_strides=[[2, 2], [2, 2]], rnn_hidden_sizes=[6, 5])),
    "crnn_unilstm_x2": ("crnn", dict(num_features=FEATS, subsampling_channels=[3, 4],
                                     subsampling_strides=[[2, 2], [1, 2]], rnn_hidden_sizes=[6, 5],
                                     bidirectional=False)),
    "crnn_unigru_x4": ("crnn", dict(num_features=FEATS, subsampling_channels=[3, 4], rnn_type="gru",
                                    subsampling_strides=[[2, 2], [2, 2]], rnn_hidden_sizes=[6],
                                    bidirectional=False)),
    "crnn_bilstm_packed": ("crnn", dict(num_features=FEATS, subsampling_channels=[3, 4],
                                        rnn_hidden_sizes=[6, 5], pack_sequences=True)),
    "conformer_x4": ("conformer", dict(num_features=FEATS, subsampling_channels=[3, 4], d_model=8,
                                       num_blocks=2, num_heads=2, head_dim=4, ffn_dim=12,
                                       conv_channels=8, conv_kernel=5, max_relative_position=3,
                                       conv_norm="layer")),
    "conformer_x2_batchnorm": ("conformer", dict(num_features=FEATS, subsampling_channels=[3, 4],
                                                 subsampling_strides=[[2, 2], [1, 2]], d_model=8,
                                                 num_blocks=2, num_heads=[2, 1], head_dim=4,
                                                 ffn_dim=[12, 6, 0, 9], conv_channels=[8, 0],
                                                 conv_kernel=3)),
    "conformer_layer_scale_zero_bias": ("conformer", dict(
        num_features=FEATS, subsampling_channels=[3, 4], d_model=8, num_blocks=2, num_heads=2,
        head_dim=4, ffn_dim=12, conv_channels=8, conv_kernel=5, max_relative_position=3,
        position_bias_init="zero", attention_layer_scale=0.1)),
}


def tiny(key: str, seed: int = 0):
    torch.manual_seed(seed)
    name, cfg = TINY[key]
    model = build_model(name, cfg, vocab_size=VOCAB).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so eval-mode norms do something
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def run(model, x: torch.Tensor, lens: list[int]):
    with torch.no_grad():
        return model(x, torch.tensor(lens, dtype=torch.int64))


@pytest.mark.parametrize("key", sorted(TINY))
def test_shapes_and_output_lengths_match_actual_frames(key):
    model = tiny(key)
    for t in (1, 2, 3, 4, 5, 7, 13, 16):
        log_probs, out_lens = run(model, torch.randn(1, t, FEATS), [t])
        assert log_probs.shape == (1, int(out_lens[0]), VOCAB)
        assert out_lens.dtype == torch.int64
        assert model.output_lengths(torch.tensor([t])).tolist() == [log_probs.shape[1]]
        assert log_probs.shape[1] == -(-t // model.subsampling)  # ceil(T / subsampling)
        assert torch.allclose(log_probs.exp().sum(-1), torch.ones(1, log_probs.shape[1]), atol=1e-5)


@pytest.mark.parametrize("key", sorted(TINY))
def test_padding_does_not_change_valid_frames(key):
    model = tiny(key)
    torch.manual_seed(1)
    long, short = 23, 10
    x = torch.randn(2, long, FEATS)
    x[1, short:] = 100.0 * torch.randn(long - short, FEATS)  # garbage padding must be ignored
    batched, lens = run(model, x, [long, short])
    alone_short, lens_short = run(model, x[1:, :short], [short])
    alone_long, _ = run(model, x[:1], [long])
    n = int(lens_short[0])
    assert lens.tolist() == [alone_long.shape[1], n]
    torch.testing.assert_close(batched[1, :n], alone_short[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[0], alone_long[0], atol=1e-5, rtol=0)


def changed_frames(model, t: int = 24, t0: int = 11) -> list[bool]:
    """Per output frame: does changing input frames >= t0 change it?"""
    torch.manual_seed(2)
    x = torch.randn(1, t, FEATS)
    y = x.clone()
    y[:, t0:] = torch.randn(t - t0, FEATS)
    a, _ = run(model, x, [t])
    b, _ = run(model, y, [t])
    return [not torch.allclose(a[0, j], b[0, j], atol=1e-6) for j in range(a.shape[1])]


@pytest.mark.parametrize("key", ["crnn_unilstm_x2", "crnn_unigru_x4"])
def test_unidirectional_crnn_is_causal(key):
    model = tiny(key)
    assert model.config.causal is True  # defaulted from bidirectional=False
    t0 = 11
    changed = changed_frames(model, t0=t0)
    last_safe = (t0 - 1) // model.subsampling  # output j sees inputs <= j * subsampling
    assert not any(changed[: last_safe + 1])
    assert all(changed[last_safe + 1:])


def test_dnn_without_right_context_is_causal_and_with_it_is_not():
    causal = build_model("dnn", dict(num_features=FEATS, context_left=3, context_right=0, stride=2,
                                     hidden_sizes=[8], dropout=0.0), vocab_size=VOCAB).eval()
    assert changed_frames(causal, t0=11) == [False] * 6 + [True] * 6  # frame j sees inputs <= 2j
    lookahead = tiny("dnn")  # context_right=1: frame 5 (inputs 8..11) sees frame 11
    assert changed_frames(lookahead, t0=11) == [False] * 5 + [True] * 7


def test_bidirectional_crnn_looks_ahead():
    assert changed_frames(tiny("crnn_bilstm_x2"))[0]


def test_packing_gives_the_same_outputs():
    packed = tiny("crnn_bilstm_packed")
    name, cfg = TINY["crnn_bilstm_packed"]
    unpacked = build_model(name, {**cfg, "pack_sequences": False}, vocab_size=VOCAB).eval()
    unpacked.load_state_dict(packed.state_dict())
    x = torch.randn(3, 17, FEATS)
    a, la = run(packed, x, [17, 9, 4])
    b, lb = run(unpacked, x, [17, 9, 4])
    assert la.tolist() == lb.tolist() == [9, 5, 2]
    for i, n in enumerate(la.tolist()):
        torch.testing.assert_close(a[i, :n], b[i, :n], atol=1e-5, rtol=0)


def test_reverse_padded_reverses_within_each_length():
    x = torch.arange(10.0).view(2, 5, 1)
    out = reverse_padded(x, torch.tensor([5, 3]))
    assert out[..., 0].tolist() == [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]]
    assert torch.equal(reverse_padded(out, torch.tensor([5, 3])), x)


def test_wrong_input_shape_is_reported():
    with pytest.raises(ValueError, match=r"expected x of shape \(N, T, 8\)"):
        tiny("dnn")(torch.randn(1, 5, 9), torch.tensor([5]))


def test_training_mode_runs_backward():
    model = tiny("conformer_x2_batchnorm").train()
    log_probs, lens = model(torch.randn(2, 12, FEATS), torch.tensor([12, 7]))
    loss = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), torch.tensor([[1, 2], [3, 3]]),
                                        lens, torch.tensor([2, 2]))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("key", ["crnn_bilstm_x2", "conformer_x2_batchnorm"])
def test_batch_norm_training_statistics_ignore_padding(key):
    """In training mode, extra padding must not change valid frames (BatchNorm sees valid frames only)."""
    name, cfg = TINY[key]
    drop = {"rnn_dropout": 0.0} if name == "crnn" else {"dropout": 0.0}
    torch.manual_seed(0)
    model = build_model(name, {**cfg, **drop}, vocab_size=VOCAB).train()
    x = torch.randn(2, 14, FEATS)
    padded = torch.cat([x, 50.0 * torch.randn(2, 9, FEATS)], dim=1)
    with torch.no_grad():
        a, lens = model(x, torch.tensor([14, 9]))
        b, _ = model(padded, torch.tensor([14, 9]))
    for i, n in enumerate(lens.tolist()):
        torch.testing.assert_close(a[i, :n], b[i, :n], atol=1e-5, rtol=0)


@pytest.mark.parametrize("key", sorted(TINY))
def test_forward_hidden_returns_every_layer_at_the_output_rate(key):
    model = tiny(key).eval()
    x, lens = torch.randn(2, 23, FEATS), torch.tensor([23, 17])
    with torch.no_grad():
        log_probs, out_lens = model(x, lens)
        hp, hl, hidden = model.forward_hidden(x, lens)
    torch.testing.assert_close(hp, log_probs)
    assert hl.tolist() == out_lens.tolist()
    cfg = model.config
    depth = len(getattr(cfg, "rnn_hidden_sizes", None) or getattr(cfg, "hidden_sizes", None)
                or range(cfg.num_blocks))
    assert len(hidden) == depth + 1  # front end + every layer/block
    assert all(h.shape[:2] == log_probs.shape[:2] for h in hidden)


def test_conformer_local_position_bias_starts_near_each_frame():
    """"local": head h starts at -slope_h * |offset|, slopes 2^-1 ... 2^-8 (ALiBi); "zero": flat."""
    cfg = dict(TINY["conformer_x4"][1], num_heads=4, max_relative_position=5)
    bias = build_model("conformer", dict(cfg, position_bias_init="local"), vocab_size=VOCAB) \
        .blocks[0].attn.rel_bias.detach()
    offsets = torch.arange(-5, 6).abs().float()
    torch.testing.assert_close(bias[0], -0.5 * offsets)
    torch.testing.assert_close(bias[-1], -(2.0 ** -8) * offsets)
    assert (bias[:, 5] == 0).all() and (bias.diff(dim=0)[:, 0] > 0).all()  # later heads see farther
    flat = build_model("conformer", dict(cfg, position_bias_init="zero"), vocab_size=VOCAB)
    assert not flat.blocks[1].attn.rel_bias.any()


def test_conformer_attention_layer_scale_is_a_learned_per_channel_factor():
    name, cfg = TINY["conformer_layer_scale_zero_bias"]
    model = build_model(name, cfg, vocab_size=VOCAB).eval()
    scale = model.blocks[0].attn.layer_scale
    assert scale.requires_grad and scale.shape == (8,) and torch.all(scale == 0.1)
    x = torch.randn(2, 23, FEATS)
    h = model.blocks[0].attn.norm(x[..., :1].expand(2, 23, 8).contiguous())
    mask = torch.ones(2, 23, dtype=torch.bool)
    with torch.no_grad():
        scaled = model.blocks[0].attn(h, mask)
        scale.fill_(1.0)
        plain = model.blocks[0].attn(h, mask)
    torch.testing.assert_close(scaled, 0.1 * plain)
    assert build_model(name, dict(cfg, attention_layer_scale=None), vocab_size=VOCAB) \
        .blocks[0].attn.layer_scale is None
