"""Pieces shared by the model families: the model contract, masks, length bookkeeping, and the
Conv2d subsampling front-end.

Every family follows one contract (icefall style):

    log_probs, out_lens = model(x, x_lens)    # x: (N, T, F) float32, x_lens: (N,) int64
                                              # log_probs: (N, T', V) log-softmax, blank = 0
    out_lens = model.output_lengths(x_lens)   # pure length bookkeeping, no forward pass
    model.subsampling                         # T / T' (an int)

Padding never changes the outputs on valid frames: every family zeroes padded input frames,
re-zeroes padding after each layer that mixes neighbouring frames, and masks attention keys.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CLIPPED_RELU_MAX = 20.0  # Deep Speech 2's clipped ReLU: min(max(x, 0), 20)

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "clipped_relu": lambda: nn.Hardtanh(0.0, CLIPPED_RELU_MAX),
    "silu": nn.SiLU,  # a.k.a. Swish, the Conformer's activation
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}


Activation = Literal["relu", "clipped_relu", "silu", "gelu", "tanh"]  # config type of ACTIVATIONS' keys


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (one of ``ACTIVATIONS``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r} (known: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]()


class AcousticModel(nn.Module):
    """Base class of every family. Subclasses set ``config`` and ``vocab_size`` and implement
    ``forward``, ``output_lengths`` and ``subsampling``. ``arch`` is set by ``register_model``."""

    arch: ClassVar[str] = ""
    config: Any
    vocab_size: int

    @property
    def subsampling(self) -> int:
        raise NotImplementedError

    def output_lengths(self, x_lens: Tensor) -> Tensor:
        """(N,) int64 input frame counts -> (N,) int64 output frame counts."""
        raise NotImplementedError

    def forward_hidden(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``forward``'s (log_probs, out_lens) plus the hidden states, each (N, T', D_i) at the
        output frame rate: index 0 is the front end's output, index i the output of layer/block
        i-1 (hidden-layer distillation matches these)."""
        raise NotImplementedError


def lengths_to_mask(lens: Tensor, max_len: int | None = None) -> Tensor:
    """(N,) lengths -> (N, T) bool mask, True on valid frames; T = ``max_len`` or max(lens)."""
    if max_len is None:
        max_len = int(lens.max()) if lens.numel() else 0
    return torch.arange(max_len, device=lens.device)[None, :] < lens[:, None]


def mask_time(x: Tensor, lens: Tensor, time_dim: int = 1) -> Tensor:
    """Zero every frame at or beyond its sequence's length. x: (N, ..., T, ...), lens: (N,)."""
    mask = lengths_to_mask(lens, x.shape[time_dim])  # (N, T)
    shape = [1] * x.dim()
    shape[0], shape[time_dim] = mask.shape
    return x.masked_fill(~mask.view(shape), 0.0)


def conv_out_lengths(lens: Tensor, kernel: int, stride: int, pad_left: int, pad_right: int) -> Tensor:
    """Frames a 1-D convolution produces: floor((T + pads - kernel) / stride) + 1, at least 0."""
    out = torch.div(lens + pad_left + pad_right - kernel, stride, rounding_mode="floor") + 1
    return out.clamp(min=0)


def time_padding(kernel: int, causal: bool) -> tuple[int, int]:
    """(left, right) time padding: causal puts all of it on the left (no look-ahead)."""
    if causal:
        return kernel - 1, 0
    return (kernel - 1) // 2, kernel // 2


def reverse_padded(x: Tensor, lens: Tensor) -> Tensor:
    """Reverse each sequence within its own length; padding stays where it is.

    x: (N, T, D), lens: (N,). Row n becomes x[n, lens[n]-1], ..., x[n, 0], x[n, lens[n]], ...
    Applying it twice gives x back.
    """
    n, t_max = x.shape[:2]
    t = torch.arange(t_max, device=x.device)[None, :]  # (1, T)
    lens = lens[:, None].to(x.device)
    idx = torch.where(t < lens, lens - 1 - t, t)  # (N, T), source frame of each frame
    rows = idx + torch.arange(n, device=x.device)[:, None] * t_max  # (N, T) rows of x as (N*T, D)
    # index_select on rows is several times faster on CPU than gather with an expanded index
    return x.reshape(n * t_max, -1).index_select(0, rows.reshape(-1)).view(x.shape)


def batch_norm_valid(norm: nn.Module, h: Tensor, mask: Tensor) -> Tensor:
    """Training-mode BatchNorm whose batch statistics come from valid frames only.

    norm: BatchNorm1d or BatchNorm2d over C channels; h: (N, T, ..., C) channels-last; mask: (N, T)
    bool. Returns h's shape; padded frames pass through unchanged. (In eval mode BatchNorm is a
    per-channel affine map and needs no mask.)
    """
    valid = h[mask]  # (M, ..., C)
    flat = valid.reshape(-1, h.shape[-1])  # (M * ..., C)
    normed = norm(flat[:, :, None, None]).flatten(1) if isinstance(norm, nn.BatchNorm2d) else norm(flat)
    out = h.clone()
    out[mask] = normed.view(valid.shape)
    return out


def check_subsampling(channels: Sequence[int], kernels: Sequence[int],
                      strides: Sequence[Sequence[int]]) -> None:
    """ValueError (a ConfigError once from_dict wraps it) on an impossible conv front-end."""
    if not (len(channels) == len(kernels) == len(strides)) or not channels:
        raise ValueError("subsampling_channels, _kernels and _strides need the same, non-zero length")
    if min(channels) < 1 or any(k < 1 or k % 2 == 0 for k in kernels):
        raise ValueError("subsampling_channels must be >= 1 and subsampling_kernels odd")
    if any(len(s) != 2 or min(s) < 1 for s in strides):
        raise ValueError("subsampling_strides must be (time, freq) pairs of integers >= 1")


class Conv2dSubsampling(nn.Module):
    """Stack of Conv2d -> norm -> activation over (time, frequency); subsamples time and frequency.

    Input (N, T, F) -> output (N, T', C * F') where C is the last layer's channels and
    T' = ``output_lengths(T)``. Output feature index is ``c * F' + f`` (channel-major), so pruning
    conv channel c of the last layer removes columns ``c*F' : (c+1)*F'`` of the next layer.

    Layer i is ``convs[i]`` (Conv2d, weight (C_i, C_{i-1}, k_i, k_i)), ``norms[i]`` (BatchNorm2d or
    Identity) and an activation. Frequency is zero-padded symmetrically; time is zero-padded on the
    left only when ``causal`` (output frame j then sees input frames <= j * subsampling only).
    Padded frames are re-zeroed after every layer, so padding never leaks into valid frames, and
    BatchNorm's training statistics come from valid frames only.
    """

    def __init__(self, num_features: int, channels: Sequence[int], kernels: Sequence[int],
                 strides: Sequence[Sequence[int]], norm: str = "batch", activation: str = "relu",
                 causal: bool = False):
        super().__init__()
        check_subsampling(channels, kernels, strides)
        if norm not in ("batch", "none"):
            raise ValueError(f"subsampling norm must be 'batch' or 'none', got {norm!r}")
        self.kernels = [int(k) for k in kernels]
        self.time_strides = [int(s[0]) for s in strides]
        self.causal = causal
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.acts = nn.ModuleList()
        in_ch, freq = 1, num_features
        for ch, k, (st, sf) in zip(channels, kernels, strides):
            self.convs.append(nn.Conv2d(in_ch, ch, k, stride=(st, sf), padding=(0, k // 2)))
            self.norms.append(nn.BatchNorm2d(ch) if norm == "batch" else nn.Identity())
            self.acts.append(make_activation(activation))
            freq = (freq + 2 * (k // 2) - k) // sf + 1
            in_ch = ch
        if freq < 1:
            raise ValueError(f"subsampling leaves no frequency bins from {num_features} features")
        self.out_freq = freq
        self.out_dim = in_ch * freq

    @property
    def subsampling(self) -> int:
        out = 1
        for s in self.time_strides:
            out *= s
        return out

    def output_lengths(self, lens: Tensor) -> Tensor:
        for k, s in zip(self.kernels, self.time_strides):
            lens = conv_out_lengths(lens, k, s, *time_padding(k, self.causal))
        return lens

    def forward(self, x: Tensor, lens: Tensor) -> tuple[Tensor, Tensor]:
        """x: (N, T, F) with padding already zeroed, lens: (N,) -> ((N, T', C*F'), (N,))."""
        h = x.unsqueeze(1)  # (N, 1, T, F)
        for conv, norm, act, k, s in zip(self.convs, self.norms, self.acts, self.kernels,
                                         self.time_strides):
            left, right = time_padding(k, self.causal)
            h = conv(F.pad(h, (0, 0, left, right)))  # (N, C, T_i, F_i)
            lens = conv_out_lengths(lens, k, s, left, right)
            if isinstance(norm, nn.BatchNorm2d) and norm.training:
                mask = lengths_to_mask(lens, h.shape[2])
                h = batch_norm_valid(norm, h.permute(0, 2, 3, 1), mask).permute(0, 3, 1, 2)
            else:
                h = norm(h)
            h = mask_time(act(h), lens, time_dim=2)
        n, c, t, f = h.shape
        return h.permute(0, 2, 1, 3).reshape(n, t, c * f), lens


def check_inputs(x: Tensor, x_lens: Tensor, num_features: int) -> None:
    """Fail early, in words, on inputs of the wrong shape."""
    if x.dim() != 3 or x.shape[-1] != num_features:
        raise ValueError(f"expected x of shape (N, T, {num_features}), got {tuple(x.shape)}")
    if x_lens.shape != (x.shape[0],):
        raise ValueError(f"expected x_lens of shape ({x.shape[0]},), got {tuple(x_lens.shape)}")
