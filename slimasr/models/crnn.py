"""CRNN: Conv2d subsampling + multi-layer LSTM/GRU + Linear to the vocabulary (Deep Speech 2 shape).

Bidirectional layers run two unidirectional RNNs: ``fwd`` on the sequence and ``bwd`` on each
sequence reversed *within its own length* (``reverse_padded``), so the backward RNN starts at the
last valid frame and never reads padding. This is exact without ``pack_padded_sequence`` and, on
CPU, about as fast as an unpacked ``nn.LSTM(bidirectional=True)`` (which would be wrong: its
backward direction reads the padding first). ``pack_sequences`` additionally skips the padding
compute; it only pays off when a batch mixes very different lengths.

With ``bidirectional: false`` the model has no look-ahead anywhere: ``causal`` then defaults to
true, which pads the convolutions on the left only in time (output frame j sees input frames
<= j * subsampling). Such a model also runs chunk by chunk (``init_stream``, ``forward_chunk``;
``slimasr.streaming`` drives them): each conv keeps its last ``kernel - 1`` input frames, each
recurrent layer its (h, c) or h, so the chunks' outputs are ``forward``'s, frame for frame.

Layout (for pruning):
- ``subsample``: see ``Conv2dSubsampling``; RNN input feature index = ``c * F' + f``.
- ``rnns[i].fwd`` / ``rnns[i].bwd``: single-layer ``nn.LSTM``/``nn.GRU`` of hidden size
  ``rnn_hidden_sizes[i]``. Hidden unit j owns rows ``g*H + j`` of ``weight_ih_l0``,
  ``weight_hh_l0``, ``bias_*`` for every gate g (LSTM gates i, f, g, o; GRU r, z, n), column j of
  ``weight_hh_l0``, and column j (forward) / H_i + j (backward) of the next layer's ``weight_ih_l0``
  or of ``head.weight``. Forward and backward directions of a layer keep the same size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from slimasr.models.common import (
    AcousticModel,
    Activation,
    Conv2dSubsampling,
    check_inputs,
    check_subsampling,
    mask_time,
    reverse_padded,
)
from slimasr.models.registry import register_model


@dataclass
class CrnnConfig:
    num_features: int = 80  # input feature dim (log-mel bins); must match the feature config
    subsampling_channels: list[int] = field(
        default_factory=lambda: [32, 32])  # Conv2d output channels, one per conv layer
    subsampling_kernels: list[int] = field(
        default_factory=lambda: [3, 3])  # square kernel of each conv layer (odd)
    subsampling_strides: list[tuple[int, int]] = field(
        default_factory=lambda: [(2, 2), (1, 2)])  # (time, freq) per layer: x2 in time
    subsampling_norm: Literal["batch", "none"] = "batch"  # BatchNorm2d after each conv, or none
    subsampling_activation: Activation = "relu"  # clipped_relu is Deep Speech 2's
    rnn_type: Literal["lstm", "gru"] = "lstm"  # recurrent cell
    rnn_hidden_sizes: list[int] = field(
        default_factory=lambda: [320, 320, 320])  # units per layer and direction
    bidirectional: bool = True  # false: streamable, no look-ahead
    causal: bool | None = None  # convs see no future frames; None: causal iff unidirectional
    rnn_dropout: float = 0.1  # dropout on each recurrent layer's output
    pack_sequences: bool = False  # skip padding compute; ~3x slower training on CPU (see module doc)

    def __post_init__(self) -> None:
        if self.causal is None:
            self.causal = not self.bidirectional
        check_subsampling(self.subsampling_channels, self.subsampling_kernels, self.subsampling_strides)
        if not self.rnn_hidden_sizes or min(self.rnn_hidden_sizes) < 1:
            raise ValueError("rnn_hidden_sizes needs at least one layer, each of >= 1 unit")
        if not 0.0 <= self.rnn_dropout < 1.0:
            raise ValueError("rnn_dropout must be in [0, 1)")

@dataclass
class CrnnStream:
    """What one chunk leaves for the next (batch N). At the start of a stream every tensor is zero,
    which is what ``forward`` sees too: the causal left padding and the RNNs' initial state.

    conv[i]: (N, C_in_i, kernel_i - 1, F_in_i), the last input frames of subsampling conv i.
    rnn[i]: recurrent layer i's state, ``(h, c)`` for an LSTM or ``(h,)`` for a GRU, each (1, N, H_i).
    """

    conv: list[Tensor]
    rnn: list[tuple[Tensor, ...]]


class RecurrentLayer(nn.Module):
    """One LSTM/GRU layer, uni- or bidirectional, exact under right padding.

    x: (N, T, D), lens: (N,) -> (N, T, H * directions); [forward | backward] along the last dim.
    Outputs on padded frames are unspecified.
    """

    def __init__(self, input_size: int, hidden: int, rnn_type: str, bidirectional: bool, pack: bool):
        super().__init__()
        cell = {"lstm": nn.LSTM, "gru": nn.GRU}[rnn_type]
        self.fwd = cell(input_size, hidden, batch_first=True)
        self.bwd = cell(input_size, hidden, batch_first=True) if bidirectional else None
        self.pack = pack

    def _run(self, rnn: nn.Module, x: Tensor, lens: Tensor) -> Tensor:
        if not self.pack:
            return rnn(x)[0]
        packed = pack_padded_sequence(x, lens.cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=x.shape[1])[0]

    def forward(self, x: Tensor, lens: Tensor) -> Tensor:
        y = self._run(self.fwd, x, lens)
        if self.bwd is None:
            return y
        back = reverse_padded(self._run(self.bwd, reverse_padded(x, lens), lens), lens)
        return torch.cat([y, back], dim=-1)

    def forward_chunk(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Unidirectional only. x: (N, T, D), state: (h, c) or (h,), each (1, N, H) -> (N, T, H)
        and the state after these T frames."""
        if isinstance(self.fwd, nn.LSTM):
            y, (h, c) = self.fwd(x, (state[0], state[1]))
            return y, (h, c)
        y, h = self.fwd(x, state[0])
        return y, (h,)


@register_model("crnn", CrnnConfig)
class Crnn(AcousticModel):
    """Conv2dSubsampling -> [RecurrentLayer -> dropout] x L -> Linear -> log-softmax."""

    def __init__(self, config: CrnnConfig, vocab_size: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.subsample = Conv2dSubsampling(
            config.num_features, config.subsampling_channels, config.subsampling_kernels,
            config.subsampling_strides, config.subsampling_norm, config.subsampling_activation,
            causal=bool(config.causal))
        directions = 2 if config.bidirectional else 1
        in_dim = self.subsample.out_dim
        self.rnns = nn.ModuleList()
        for hidden in config.rnn_hidden_sizes:
            self.rnns.append(RecurrentLayer(in_dim, hidden, config.rnn_type, config.bidirectional,
                                            config.pack_sequences))
            in_dim = hidden * directions
        self.dropout = nn.Dropout(config.rnn_dropout)
        self.head = nn.Linear(in_dim, vocab_size)

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
        """``forward`` plus the hidden states: [subsampling output (N, T', C*F'), then each
        recurrent layer's output (N, T', dirs*H_i)] (before dropout; padding unspecified)."""
        check_inputs(x, x_lens, self.config.num_features)
        h, lens = self.subsample(mask_time(x, x_lens), x_lens)  # (N, T', C*F')
        hidden = [h]
        for rnn in self.rnns:
            h = rnn(h, lens)
            hidden.append(h)
            h = self.dropout(h)
        return self.head(h).log_softmax(dim=-1), lens, hidden

    # ---------------------------------------------------------------------------------------------
    # Streaming: chunk by chunk, for unidirectional models with causal convolutions

    def streaming_problem(self) -> str | None:
        """Why this model cannot run chunk by chunk, or None when it can."""
        if self.config.bidirectional:
            return ("its backward recurrent layers read the whole utterance before the first output "
                    "(a streamable CRNN is trained with model.config.bidirectional=false)")
        if not self.config.causal:
            return "its convolutions look at future frames (model.config.causal is false)"
        return None

    def init_stream(self, batch: int = 1) -> CrnnStream:
        """The state at the start of a stream: all zeros (see ``CrnnStream``)."""
        like = self.head.weight
        conv = [like.new_zeros(batch, conv.in_channels, k - 1, freq) for conv, k, freq in
                zip(self.subsample.convs, self.subsample.kernels,
                    conv_input_freqs(self.subsample, self.config.num_features))]
        rnn = []
        for layer in self.rnns:
            zeros = like.new_zeros(1, batch, layer.fwd.hidden_size)
            rnn.append((zeros, zeros.clone()) if isinstance(layer.fwd, nn.LSTM) else (zeros,))
        return CrnnStream(conv, rnn)

    def forward_chunk(self, x: Tensor, state: CrnnStream) -> tuple[Tensor, CrnnStream]:
        """The next T frames of a stream (eval mode). x: (N, T, F) normalized features ->
        log_probs (N, ceil(T / subsampling), V) and the state after them.

        The chunks' log-probs, concatenated, are ``forward``'s on the concatenated frames. T must
        be a multiple of ``subsampling`` except in a stream's last chunk (each conv then keeps
        exactly its last ``kernel - 1`` input frames).
        """
        problem = self.streaming_problem()
        if problem is not None:
            raise ValueError(f"this CRNN cannot stream: {problem}")
        h, conv = subsample_chunk(self.subsample, x, state.conv)
        rnn = []
        for layer, layer_state in zip(self.rnns, state.rnn):
            h, layer_state = layer.forward_chunk(h, layer_state)
            rnn.append(layer_state)
        return self.head(h).log_softmax(dim=-1), CrnnStream(conv, rnn)


def conv_input_freqs(subsample: Conv2dSubsampling, num_features: int) -> list[int]:
    """Frequency bins entering each conv of ``subsample`` (``num_features`` enter the first)."""
    freqs, freq = [], num_features
    for conv in subsample.convs:
        freqs.append(freq)
        freq = (freq + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
    return freqs


def subsample_chunk(subsample: Conv2dSubsampling, x: Tensor, caches: list[Tensor]
                    ) -> tuple[Tensor, list[Tensor]]:
    """``Conv2dSubsampling.forward`` (causal, eval mode) on the next T frames of a stream.

    x: (N, T, F); caches[i]: (N, C_in_i, k_i - 1, F_in_i), conv i's last input frames ->
    (N, T', C * F') and the new caches. Each conv sees its cache, then the new frames: the
    zeros of a fresh cache are the causal left padding.
    """
    h = x.unsqueeze(1)  # (N, 1, T, F)
    new_caches = []
    for conv, norm, act, cache in zip(subsample.convs, subsample.norms, subsample.acts, caches):
        h = torch.cat([cache, h], dim=2)  # (N, C_in, k - 1 + T_i, F_in)
        keep = cache.shape[2]
        new_caches.append(h[:, :, h.shape[2] - keep:] if keep else cache)
        h = act(norm(conv(h)))  # (N, C, ceil(T_i / stride), F_out)
    n, c, t, f = h.shape
    return h.permute(0, 2, 1, 3).reshape(n, t, c * f), new_caches
