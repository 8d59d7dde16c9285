"""CRNN: Conv2d subsampling + multi-layer LSTM/GRU + Linear to the vocabulary (Deep Speech 2 shape).

Bidirectional layers run two unidirectional RNNs: ``fwd`` on the sequence and ``bwd`` on each
sequence reversed *within its own length* (``reverse_padded``), so the backward RNN starts at the
last valid frame and never reads padding. This is exact without ``pack_padded_sequence`` and, on
CPU, about as fast as an unpacked ``nn.LSTM(bidirectional=True)`` (which would be wrong: its
backward direction reads the padding first). ``pack_sequences`` additionally skips the padding
compute; it only pays off when a batch mixes very different lengths.

With ``bidirectional: false`` the model has no look-ahead anywhere: ``causal`` then defaults to
true, which pads the convolutions on the left only in time (output frame j sees input frames
<= j * subsampling).

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
