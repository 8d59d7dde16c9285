"""DNN: the classic hybrid-era acoustic model, a frame-stacked MLP trained with CTC.

Each output frame sees ``context_left + 1 + context_right`` stacked input frames; ``stride`` keeps
every stride-th window (frame skipping), so T' = ceil(T / stride). With ``context_right = 0`` the
model has no look-ahead (streamable).

Layout (for pruning): ``layers[i]`` is Linear(in_i, hidden_sizes[i]); hidden unit j of layer i is
row j of ``layers[i].weight``/``bias`` and column j of the next layer (``layers[i+1]`` or ``head``).
The stacked input feature index is ``offset * F + f`` with offset 0 = frame t - context_left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimasr.models.common import AcousticModel, Activation, check_inputs, make_activation, mask_time
from slimasr.models.registry import register_model


@dataclass
class DnnConfig:
    num_features: int = 80  # input feature dim (log-mel bins); must match the feature config
    context_left: int = 5  # past frames stacked onto each frame
    context_right: int = 5  # future frames stacked onto each frame (0: no look-ahead)
    stride: int = 2  # keep every stride-th stacked window (time subsampling)
    hidden_sizes: list[int] = field(default_factory=lambda: [1024] * 4)  # units of each hidden layer
    activation: Activation = "relu"  # hidden activation
    dropout: float = 0.1  # dropout after each hidden layer's activation

    def __post_init__(self) -> None:
        if self.context_left < 0 or self.context_right < 0:
            raise ValueError("context_left and context_right must be >= 0")
        if self.stride < 1:
            raise ValueError("stride must be >= 1")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError("hidden_sizes needs at least one layer, each of >= 1 unit")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")


def stack_frames(x: Tensor, left: int, right: int, stride: int) -> Tensor:
    """(N, T, F) -> (N, ceil(T / stride), (left + 1 + right) * F); zeros beyond both ends.

    Gathers the windows with an index table instead of ``Tensor.unfold`` (same values): the ONNX
    exporter cannot export unfold over a dynamic time axis, and gathers this.
    """
    n, t, f = x.shape
    width = left + 1 + right
    padded = F.pad(x, (0, 0, left, right))  # (N, T + left + right, F)
    starts = torch.arange(0, t, stride, device=x.device)  # (T',) first padded frame of each window
    index = starts[:, None] + torch.arange(width, device=x.device)[None, :]  # (T', width)
    return padded[:, index].reshape(n, -1, width * f)  # (N, T', width, F) -> (N, T', width * F)


@register_model("dnn", DnnConfig)
class Dnn(AcousticModel):
    """Frame stacking -> [Linear -> activation -> dropout] x L -> Linear -> log-softmax."""

    def __init__(self, config: DnnConfig, vocab_size: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        in_dim = (config.context_left + 1 + config.context_right) * config.num_features
        self.layers = nn.ModuleList()
        self.acts = nn.ModuleList()
        for size in config.hidden_sizes:
            self.layers.append(nn.Linear(in_dim, size))
            self.acts.append(make_activation(config.activation))
            in_dim = size
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(in_dim, vocab_size)

    @property
    def subsampling(self) -> int:
        return self.config.stride

    def output_lengths(self, x_lens: Tensor) -> Tensor:
        return torch.div(x_lens + self.config.stride - 1, self.config.stride, rounding_mode="floor")

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """x: (N, T, F), x_lens: (N,) -> log_probs (N, T', V), out_lens (N,)."""
        log_probs, lens, _ = self.forward_hidden(x, x_lens)
        return log_probs, lens

    def forward_hidden(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``forward`` plus the hidden states: [stacked input frames (N, T', (l+1+r)*F), then each
        hidden layer's activation (N, T', H_i)] (before dropout)."""
        cfg = self.config
        check_inputs(x, x_lens, cfg.num_features)
        h = stack_frames(mask_time(x, x_lens), cfg.context_left, cfg.context_right, cfg.stride)
        hidden = [h]
        for layer, act in zip(self.layers, self.acts):
            h = act(layer(h))
            hidden.append(h)
            h = self.dropout(h)
        return self.head(h).log_softmax(dim=-1), self.output_lengths(x_lens), hidden
