"""Conformer CTC encoder (Gulati et al. 2020): Conv2d subsampling, then blocks of

    x = x + ffn_residual_scale * FFN1(x)      macaron half-step feed-forward
    x = x + MHSA(x)                           self-attention with key padding mask
    x = x + ConvModule(x)                     pointwise -> GLU -> depthwise -> norm -> act -> pointwise
    x = x + ffn_residual_scale * FFN2(x)
    x = LayerNorm(x)

and a Linear CTC head. Every sub-module is pre-norm (its own LayerNorm first).

Positions: a learned *relative* position bias per head (T5 style, offsets clipped to
+-``max_relative_position``) added to the attention logits; no absolute position is used, so a
sequence's outputs do not depend on where padding begins, and the depthwise convolution adds
local order as well.

Layout (for pruning): every width is per block and may be 0 (the sub-module is then absent):
- Attention, head-major: head h owns rows ``h*head_dim : (h+1)*head_dim`` of ``q_proj``, ``k_proj``,
  ``v_proj`` (weight and bias), the same columns of ``out_proj.weight``, and row h of ``rel_bias``.
- FFN: inner unit j owns row j of ``up`` (weight, bias) and column j of ``down.weight``.
- ConvModule, GLU channel c = ``pw_value(x)[c] * sigmoid(pw_gate(x)[c])``: channel c owns row c of
  ``pw_value`` and ``pw_gate``, channel c of ``depthwise`` and ``norm``, and column c of ``pw_out``.
The residual width ``d_model`` is shared by all blocks and is not per block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimasr.models.common import (
    AcousticModel,
    Activation,
    Conv2dSubsampling,
    batch_norm_valid,
    check_inputs,
    check_subsampling,
    lengths_to_mask,
    make_activation,
    mask_time,
)
from slimasr.models.registry import register_model


@dataclass
class ConformerConfig:
    num_features: int = 80  # input feature dim (log-mel bins); must match the feature config
    subsampling_channels: list[int] = field(
        default_factory=lambda: [64, 64])  # Conv2d output channels, one per conv layer
    subsampling_kernels: list[int] = field(
        default_factory=lambda: [3, 3])  # square kernel of each conv layer (odd)
    subsampling_strides: list[tuple[int, int]] = field(
        default_factory=lambda: [(2, 2), (2, 2)])  # (time, freq) per layer: x4; [[2, 2], [1, 2]] is x2
    subsampling_norm: Literal["batch", "none"] = "none"  # norm after each subsampling conv
    subsampling_activation: Activation = "relu"  # activation after each subsampling conv
    d_model: int = 144  # residual width of every block
    num_blocks: int = 8  # conformer blocks
    num_heads: int | list[int] = 4  # heads: one int, or one per block (0 = no attention module)
    head_dim: int = 36  # width of each attention head
    # FFN inner units: one int, or 2 per block (block0.ffn1, block0.ffn2, block1.ffn1, ...; 0 = none)
    ffn_dim: int | list[int] = 576
    conv_channels: int | list[int] = 144  # GLU channels: one int, or one per block (0 = no conv module)
    conv_kernel: int = 15  # depthwise kernel in frames (odd)
    conv_norm: Literal["batch", "layer"] = "batch"  # batch keeps channels independent (exact pruning)
    activation: Activation = "silu"  # FFN and conv-module activation (Swish in the paper)
    max_relative_position: int = 64  # relative offsets beyond +-this share one learned bias
    # initial relative bias: "local" = -slope_h * |offset| with slopes 2^-1 ... 2^-8 spread over
    # the heads (ALiBi's geometric slopes, but learned from there), so attention starts near each
    # frame; "zero" = uniform attention at the start
    position_bias_init: Literal["local", "zero"] = "local"
    # learned per-channel scale on the attention branch (LayerScale, Touvron et al. 2021), started
    # at this value; null = plain residual. A small start lets the convolution and FFN path learn
    # the acoustics first (measured on the 1.5 h corpus: docs/training-notes.md)
    attention_layer_scale: float | None = None
    ffn_residual_scale: float = 0.5  # macaron half-step: x + scale * FFN(x)
    dropout: float = 0.1  # dropout on every residual branch and after the input projection
    attention_dropout: float = 0.0  # dropout on attention weights

    def __post_init__(self) -> None:
        for name in ("num_heads", "conv_channels"):
            _expand(getattr(self, name), self.num_blocks, name)
        _expand(self.ffn_dim, 2 * self.num_blocks, "ffn_dim")
        if self.num_blocks < 1 or self.d_model < 1 or self.head_dim < 1:
            raise ValueError("num_blocks, d_model and head_dim must be >= 1")
        if self.conv_kernel % 2 == 0:
            raise ValueError("conv_kernel must be odd")
        check_subsampling(self.subsampling_channels, self.subsampling_kernels, self.subsampling_strides)

    def block_widths(self, i: int) -> tuple[int, int, int, int]:
        """(heads, ffn1 units, ffn2 units, conv channels) of block i."""
        ffn = _expand(self.ffn_dim, 2 * self.num_blocks, "ffn_dim")
        return (_expand(self.num_heads, self.num_blocks, "num_heads")[i], ffn[2 * i], ffn[2 * i + 1],
                _expand(self.conv_channels, self.num_blocks, "conv_channels")[i])


def _expand(value: int | list[int], n: int, name: str) -> list[int]:
    """An int for every position, or a list that must have exactly n non-negative entries."""
    values = [value] * n if isinstance(value, int) else list(value)
    if len(values) != n:
        raise ValueError(f"{name} needs {n} values, got {len(values)}")
    if min(values) < 0:
        raise ValueError(f"{name} values must be >= 0")
    return values


class FeedForward(nn.Module):
    """LayerNorm -> up (d_model -> inner) -> activation -> dropout -> down -> dropout. (N, T, D) -> same."""

    def __init__(self, d_model: int, inner: int, activation: str, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.up = nn.Linear(d_model, inner)
        self.act = make_activation(activation)
        self.down = nn.Linear(inner, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down(self.dropout(self.act(self.up(self.norm(x))))))


class SelfAttention(nn.Module):
    """LayerNorm -> multi-head self-attention with relative position bias -> dropout.

    x: (N, T, D), key_mask: (N, T) bool (True = valid) -> (N, T, D). Projections are head-major
    (see the module docstring); ``rel_bias``: (H, 2 * max_relative_position + 1).
    """

    def __init__(self, d_model: int, heads: int, head_dim: int, max_rel: int, dropout: float,
                 attention_dropout: float, bias_init: str = "zero", layer_scale: float | None = None):
        super().__init__()
        self.heads, self.head_dim, self.max_rel = heads, head_dim, max_rel
        self.norm = nn.LayerNorm(d_model)
        self.q_proj = nn.Linear(d_model, heads * head_dim)
        self.k_proj = nn.Linear(d_model, heads * head_dim)
        self.v_proj = nn.Linear(d_model, heads * head_dim)
        self.out_proj = nn.Linear(heads * head_dim, d_model)
        self.rel_bias = nn.Parameter(_initial_bias(heads, max_rel, bias_init))
        self.attention_dropout = attention_dropout
        self.dropout = nn.Dropout(dropout)
        self.layer_scale = (None if layer_scale is None
                            else nn.Parameter(torch.full((d_model,), float(layer_scale))))

    def position_bias(self, t: int, device: torch.device) -> Tensor:
        """(H, T, T): bias[h, i, j] = rel_bias[h, clip(j - i)]."""
        pos = torch.arange(t, device=device)
        offset = (pos[None, :] - pos[:, None]).clamp(-self.max_rel, self.max_rel) + self.max_rel
        return self.rel_bias[:, offset]

    def _heads(self, proj: nn.Linear, x: Tensor) -> Tensor:
        n, t, _ = x.shape
        return proj(x).view(n, t, self.heads, self.head_dim).transpose(1, 2)  # (N, H, T, dh)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        n, t, _ = x.shape
        h = self.norm(x)
        q, k, v = (self._heads(p, h) for p in (self.q_proj, self.k_proj, self.v_proj))
        bias = self.position_bias(t, x.device).unsqueeze(0)  # (1, H, T, T)
        bias = bias.masked_fill(~key_mask[:, None, None, :], float("-inf"))  # (N, H, T, T)
        p = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=p)
        out = self.dropout(self.out_proj(y.transpose(1, 2).reshape(n, t, self.heads * self.head_dim)))
        return out if self.layer_scale is None else out * self.layer_scale


def _initial_bias(heads: int, max_rel: int, kind: str) -> Tensor:
    """(H, 2 * max_rel + 1) starting relative bias. "local": head h gets -slope_h * |offset|, slopes
    geometric from 2^-1 to 2^-8 over the heads (Press et al. 2022, ALiBi), so each head starts with
    its own attention span; "zero": all offsets equal."""
    if kind == "zero":
        return torch.zeros(heads, 2 * max_rel + 1)
    slopes = 2.0 ** -torch.linspace(1.0, 8.0, heads)  # (H,); one head: 2^-1
    offsets = torch.arange(-max_rel, max_rel + 1).abs().float()  # (2R+1,)
    return -slopes[:, None] * offsets[None, :]


class ConvModule(nn.Module):
    """LayerNorm -> GLU(pw_value, pw_gate) -> depthwise conv -> norm -> act -> pw_out -> dropout.

    x: (N, T, D), mask: (N, T) bool -> (N, T, D). Pointwise convs are Linear layers (the same
    thing on (N, T, C)). Padded frames are zeroed before the depthwise conv. With ``batch`` norm
    every channel is independent, so removing channel c is exact; ``layer`` norm couples channels.
    """

    def __init__(self, d_model: int, channels: int, kernel: int, norm: str, activation: str,
                 dropout: float):
        super().__init__()
        self.norm_in = nn.LayerNorm(d_model)
        self.pw_value = nn.Linear(d_model, channels)
        self.pw_gate = nn.Linear(d_model, channels)
        self.depthwise = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.norm = nn.BatchNorm1d(channels) if norm == "batch" else nn.LayerNorm(channels)
        self.act = make_activation(activation)
        self.pw_out = nn.Linear(channels, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.norm_in(x)
        h = self.pw_value(h) * torch.sigmoid(self.pw_gate(h))  # (N, T, C)
        h = h.masked_fill(~mask[:, :, None], 0.0)
        h = self.depthwise(h.transpose(1, 2)).transpose(1, 2)  # (N, T, C)
        return self.dropout(self.pw_out(self.act(self._normalize(h, mask))))

    def _normalize(self, h: Tensor, mask: Tensor) -> Tensor:
        """h: (N, T, C) -> same. BatchNorm's training statistics come from valid frames only."""
        if isinstance(self.norm, nn.LayerNorm):
            return self.norm(h)
        if self.training:
            return batch_norm_valid(self.norm, h, mask)
        return self.norm(h.transpose(1, 2)).transpose(1, 2)


class ConformerBlock(nn.Module):
    """One block; a sub-module whose width is 0 is None and skipped. x: (N, T, D), mask: (N, T)."""

    def __init__(self, cfg: ConformerConfig, index: int):
        super().__init__()
        heads, ffn1, ffn2, conv = cfg.block_widths(index)
        d, act, drop = cfg.d_model, cfg.activation, cfg.dropout
        self.ffn1 = FeedForward(d, ffn1, act, drop) if ffn1 else None
        self.attn = SelfAttention(d, heads, cfg.head_dim, cfg.max_relative_position, drop,
                                  cfg.attention_dropout, cfg.position_bias_init,
                                  cfg.attention_layer_scale) if heads else None
        self.conv = ConvModule(d, conv, cfg.conv_kernel, cfg.conv_norm, act, drop) if conv else None
        self.ffn2 = FeedForward(d, ffn2, act, drop) if ffn2 else None
        self.norm_out = nn.LayerNorm(d)
        self.ffn_scale = cfg.ffn_residual_scale

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if self.ffn1 is not None:
            x = x + self.ffn_scale * self.ffn1(x)
        if self.attn is not None:
            x = x + self.attn(x, mask)
        if self.conv is not None:
            x = x + self.conv(x, mask)
        if self.ffn2 is not None:
            x = x + self.ffn_scale * self.ffn2(x)
        return self.norm_out(x)


@register_model("conformer", ConformerConfig)
class Conformer(AcousticModel):
    """Conv2dSubsampling -> Linear to d_model -> dropout -> blocks -> Linear -> log-softmax."""

    def __init__(self, config: ConformerConfig, vocab_size: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.subsample = Conv2dSubsampling(
            config.num_features, config.subsampling_channels, config.subsampling_kernels,
            config.subsampling_strides, config.subsampling_norm, config.subsampling_activation,
            causal=False)
        self.input_proj = nn.Linear(self.subsample.out_dim, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(ConformerBlock(config, i) for i in range(config.num_blocks))
        self.head = nn.Linear(config.d_model, vocab_size)

    @property
    def subsampling(self) -> int:
        return self.subsample.subsampling

    def output_lengths(self, x_lens: Tensor) -> Tensor:
        return self.subsample.output_lengths(x_lens)

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """x: (N, T, F), x_lens: (N,) -> log_probs (N, T', V), out_lens (N,)."""
        log_probs, lens, _ = self.forward_hidden(x, x_lens)
        return log_probs, lens

    def forward_hidden(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``forward`` plus the hidden states: [input projection output (N, T', D), then each
        block's output (N, T', D)]."""
        check_inputs(x, x_lens, self.config.num_features)
        h, lens = self.subsample(mask_time(x, x_lens), x_lens)  # (N, T', C*F')
        h = self.dropout(self.input_proj(h))  # (N, T', D)
        hidden = [h]
        mask = lengths_to_mask(lens, h.shape[1])
        for block in self.blocks:
            h = block(h, mask)
            hidden.append(h)
        return self.head(h).log_softmax(dim=-1), lens, hidden
