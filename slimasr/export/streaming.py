"""The streaming ONNX graph: one chunk of raw fbank and the state -> the chunk's log-probs and the
new state, in the state layout of sherpa-onnx's streaming zipformer2 CTC models, so sherpa-onnx's
``OnlineRecognizer.from_zipformer2_ctc`` runs it unmodified (and so does
``slimasr.runtime.streaming``).

    wrapper = StreamingWrapper(model, cmvn)                  # a causal CRNN; wrapper.layout: states
    export_streaming_onnx(wrapper, "bundle/model.streaming.onnx", opset=17, chunk_frames=16)
    entry = write_streaming(source, bundle_tmp, config, real)   # slimasr export: graph + parity

sherpa-onnx feeds ``x`` (N, T, F) and then the states by position, and takes ``log_probs`` and the
new states back by position. It builds the initial states itself, as zeros, from the graph's
metadata: for each encoder layer six tensors shaped by ``left_context_len``, ``num_heads`` x
``query_head_dims`` / ``value_head_dims``, ``encoder_dims`` and ``cnn_module_kernels``, then an
embedding cache (N, 128, 3, 19) and a processed-frames count (N,) int64. Our state is zeros at the
start too, so it is carried in those tensors: one "layer" per subsampling conv, whose conv-cache
slot holds the conv's last input frames (N, C * F, k - 1), and one per recurrent layer, whose
key and value slots hold h and c (1, N, H) — nn.LSTM's own layout. The other slots are unused and
passed through unchanged (their shapes are chosen as small as the layout allows). Metadata ``T`` and
``decode_chunk_len`` are the chunk sherpa-onnx feeds; this graph takes any T that is a multiple of
the subsampling (and any T in the last chunk).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from slimasr import __version__
from slimasr.data.features import GlobalCmvn
from slimasr.decode import greedy_decode
from slimasr.export.graph import ExportWrapper, add_metadata, exportable_
from slimasr.export.parity import ExportCheckFailed, parity_cases
from slimasr.models.crnn import CrnnStream, conv_input_freqs
from slimasr.runtime.recognizer import open_session
from slimasr.runtime.streaming import STREAMING_FILE, OnnxStep
from slimasr.streaming import chunk_frames_for, streaming_problem

STATE_LAYOUT = "sherpa-onnx zipformer2_ctc"  # whose streaming state layout the graph follows
SLOTS = 6  # states per encoder layer in sherpa-onnx's zipformer2 CTC layout
EMBED_SHAPE = (128, 3, 19)  # sherpa-onnx's fixed encoder_embed cache, after the batch dim
UNUSED_DIM = 4  # encoder_dims of a recurrent layer's "layer": only sizes unused slots
UNUSED_KERNEL = 3  # cnn_module_kernels of a recurrent layer's "layer" (kernel // 2 = 1 frame)


@dataclass
class StateSpec:
    """One state tensor of the graph, in sherpa-onnx's order."""

    name: str  # input name; the output is "new_" + name
    shape: tuple[int, ...]  # with batch 1
    batch_dim: int  # where sherpa-onnx stacks streams of a batch
    role: str  # what it holds ("unused": passed through)
    dtype: str = "float32"  # element type of the state tensor


@dataclass
class LayerMeta:
    """The metadata values of one sherpa-onnx encoder layer (they fix its six state shapes)."""

    encoder_dim: int
    head_dim: int  # query_head_dims = value_head_dims, with num_heads 1
    context: int  # left_context_len
    kernel: int  # cnn_module_kernels (slots 4 and 5 hold kernel // 2 frames)


SLOT_BATCH_DIMS = (1, 1, 1, 1, 0, 0)  # where sherpa-onnx stacks a batch's streams, per slot
ROLES = {"cache": "last k-1 input frames of a subsampling conv, (N, C*F, k-1)",
         "h": "recurrent layer's h, (1, N, H)", "c": "LSTM layer's c, (1, N, H)",
         "frames": "input frames processed so far"}


def slot_shapes(meta: LayerMeta) -> list[tuple[int, ...]]:
    """The six state shapes sherpa-onnx gives an encoder layer, batch 1
    (``online-zipformer2-ctc-model.cc``: cached key, nonlinear attention, two cached values, two
    conv caches)."""
    key = value = (meta.context, 1, meta.head_dim)
    conv = (1, meta.encoder_dim, meta.kernel // 2)
    return [key, (1, 1, meta.context, 3 * meta.encoder_dim // 4), value, value, conv, conv]


class StreamingLayout:
    """Where a causal CRNN's state sits among sherpa-onnx's state tensors (see module doc)."""

    def __init__(self, model: nn.Module):
        sub = model.subsample
        freqs = conv_input_freqs(sub, model.config.num_features)
        self.conv_shapes = [(conv.in_channels, k - 1, f) for conv, k, f in zip(sub.convs, sub.kernels, freqs)]
        self.hidden = [layer.fwd.hidden_size for layer in model.rnns]
        self.lstm = isinstance(model.rnns[0].fwd, nn.LSTM)
        self.layers = ([LayerMeta(c * f, 1, 1, 2 * keep + 1) for c, keep, f in self.conv_shapes]
                       + [LayerMeta(UNUSED_DIM, h, 1, UNUSED_KERNEL) for h in self.hidden])
        self.states = self._specs()

    def _specs(self) -> list[StateSpec]:
        specs = []
        for i, meta in enumerate(self.layers):
            layer = f"conv{i}" if i < len(self.conv_shapes) else f"rnn{i - len(self.conv_shapes)}"
            for slot, (shape, used) in enumerate(zip(slot_shapes(meta), self._used_slots(i))):
                name = f"{layer}_{used}" if used else f"{layer}_unused{slot}"
                specs.append(StateSpec(name, shape, SLOT_BATCH_DIMS[slot], ROLES.get(used, "unused")))
        specs.append(StateSpec("embed_unused", (1, *EMBED_SHAPE), 0, "unused"))
        specs.append(StateSpec("processed_frames", (1,), 0, ROLES["frames"], "int64"))
        return specs

    def _used_slots(self, layer: int) -> list[str | None]:
        """What each of a layer's six slots holds (None: unused)."""
        if layer < len(self.conv_shapes):
            return [None, None, None, None, "cache", None]
        return ["h", None, "c" if self.lstm else None, None, None, None]

    def initial(self) -> list[Tensor]:
        """The states at the start of a stream (batch 1): zeros, as sherpa-onnx makes them."""
        dtypes = {"float32": torch.float32, "int64": torch.int64}
        return [torch.zeros(s.shape, dtype=dtypes[s.dtype]) for s in self.states]

    def unpack(self, states: tuple[Tensor, ...]) -> CrnnStream:
        """sherpa-onnx's tensors -> the model's ``CrnnStream``."""
        conv = []
        for i, (c, keep, f) in enumerate(self.conv_shapes):
            cache = states[SLOTS * i + 4]  # (N, C * F, k - 1)
            conv.append(cache.reshape(cache.shape[0], c, f, keep).permute(0, 1, 3, 2))
        rnn = []
        for j in range(len(self.hidden)):
            base = SLOTS * (len(self.conv_shapes) + j)
            rnn.append((states[base], states[base + 2]) if self.lstm else (states[base],))
        return CrnnStream(conv, rnn)

    def pack(self, stream: CrnnStream, states: tuple[Tensor, ...], frames: Tensor) -> list[Tensor]:
        """The model's new state into sherpa-onnx's tensors; unused ones pass through unchanged,
        the processed-frames count grows by ``frames``."""
        out = list(states)
        for i, cache in enumerate(stream.conv):  # (N, C, k - 1, F)
            n, c, keep, f = cache.shape
            out[SLOTS * i + 4] = cache.permute(0, 1, 3, 2).reshape(n, c * f, keep)
        for j, layer_state in enumerate(stream.rnn):
            base = SLOTS * (len(self.conv_shapes) + j)
            out[base] = layer_state[0]
            if self.lstm:
                out[base + 2] = layer_state[1]
        out[-1] = states[-1] + frames
        return [t if t is not s else t.clone() for t, s in zip(out, states)]  # outputs, not inputs

    def metadata(self, chunk_frames: int) -> dict[str, str]:
        """What sherpa-onnx reads to build the states and to feed chunks of ``chunk_frames``."""
        def joined(values):
            return ",".join(str(v) for v in values)

        return {"encoder_dims": joined(m.encoder_dim for m in self.layers),
                "query_head_dims": joined(m.head_dim for m in self.layers),
                "value_head_dims": joined(m.head_dim for m in self.layers),
                "num_heads": joined(1 for _ in self.layers),
                "num_encoder_layers": joined(1 for _ in self.layers),
                "cnn_module_kernels": joined(m.kernel for m in self.layers),
                "left_context_len": joined(m.context for m in self.layers),
                "T": str(chunk_frames), "decode_chunk_len": str(chunk_frames)}

    def describe(self) -> list[dict[str, Any]]:
        """The states for bundle.json."""
        return [{"name": s.name, "shape": list(s.shape), "batch_dim": s.batch_dim, "dtype": s.dtype,
                 "role": s.role} for s in self.states]


class StreamingWrapper(nn.Module):
    """What the streaming graph computes: global CMVN, then ``forward_chunk`` with the state in
    sherpa-onnx's layout. x: (N, T, F) raw fbank, states -> log_probs (N, T', V), new states."""

    def __init__(self, model: nn.Module, cmvn: GlobalCmvn | None):
        super().__init__()
        self.model = exportable_(model).eval()
        self.layout = StreamingLayout(model)
        dim = model.config.num_features
        self.register_buffer("mean", cmvn.mean.clone() if cmvn is not None else torch.zeros(dim))
        self.register_buffer("std", cmvn.std.clone() if cmvn is not None else torch.ones(dim))

    def forward(self, x: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        stream = self.layout.unpack(states)
        log_probs, stream = self.model.forward_chunk((x - self.mean) / self.std, stream)
        frames = torch.full_like(states[-1], x.shape[1])
        return (log_probs, *self.layout.pack(stream, states, frames))


def export_streaming_onnx(wrapper: StreamingWrapper, path: str | Path, opset: int, chunk_frames: int,
                          metadata: dict[str, str] | None = None) -> Path:
    """Write the streaming graph at ``path`` (dynamic N and T) with sherpa-onnx's metadata."""
    names = [s.name for s in wrapper.layout.states]
    axes = {"x": {0: "N", 1: "T"}, "log_probs": {0: "N", 1: "T_out"}}
    for spec in wrapper.layout.states:
        axes[spec.name] = axes["new_" + spec.name] = {spec.batch_dim: "N"}
    x = torch.zeros(1, chunk_frames, wrapper.mean.numel())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(wrapper.eval(), (x, *wrapper.layout.initial()), str(path),
                          input_names=["x", *names], output_names=["log_probs", *("new_" + n for n in names)],
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    add_metadata(path, {**wrapper.layout.metadata(chunk_frames), **(metadata or {})})
    return Path(path)


def streaming_metadata(model: nn.Module, chunk_frames: int) -> dict[str, str]:
    """Our own metadata keys (sherpa-onnx's come from ``StreamingLayout.metadata``)."""
    return {"model_type": "zipformer2_ctc", "producer": f"slimasr {__version__}",
            "architecture": model.arch, "vocab_size": str(model.vocab_size),
            "subsampling_factor": str(model.subsampling), "feature_dim": str(model.config.num_features),
            "chunk_multiple": str(model.subsampling), "cmvn_folded": "1", "blank_id": "0",
            "state_layout": f"{STATE_LAYOUT} (docs/streaming.md)"}


# ---------------------------------------------------------------------------------------------
# slimasr export: write the graph into the bundle and check it


def write_streaming(source: Any, tmp: Path, config: Any, real: list[Tensor]) -> dict[str, Any] | None:
    """Export ``model.streaming.onnx`` into ``tmp`` and check it against the offline PyTorch model;
    bundle.json's ``streaming`` entry, or None for a model that cannot stream. ``source``: the
    export's loaded model directory; ``config``: its ExportConfig; ``real``: raw fbank (T, F)."""
    model = source.wrapper.model
    if streaming_problem(model) is not None:
        return None
    chunk = chunk_frames_for(config.streaming_chunk_ms, source.frontend.features.frame_shift,
                             model.subsampling)
    wrapper = StreamingWrapper(model, source.frontend.cmvn)
    path = export_streaming_onnx(wrapper, tmp / STREAMING_FILE, config.opset, chunk,
                                 streaming_metadata(model, chunk))
    feats = [x[0] for _, x, _ in parity_cases(source.wrapper, config.parity_lengths, real) if len(x) == 1]
    parity = check_streaming_parity(source.wrapper, wrapper.layout, open_session(path), feats,
                                     [chunk, model.subsampling], config.parity_atol, str(source.path))
    return {"file": STREAMING_FILE, "int8_file": None, "layout": STATE_LAYOUT, "chunk_frames": chunk,
            "chunk_multiple": model.subsampling, "inputs": ["x", *(s.name for s in wrapper.layout.states)],
            "outputs": ["log_probs", *("new_" + s.name for s in wrapper.layout.states)],
            "states": wrapper.layout.describe(), **parity}


def check_streaming_parity(offline: ExportWrapper, layout: StreamingLayout, session, feats: list[Tensor],
                           chunks: list[int], atol: float, where: str | None = None) -> dict[str, Any]:
    """The streaming graph, chunk by chunk on onnxruntime, against the offline PyTorch model on the
    whole utterance: log-probs within ``atol`` and identical greedy tokens, for every utterance
    ``feats`` (T, F) and chunk size; else ExportCheckFailed (nothing is published)."""
    worst, worst_case = 0.0, ""
    for f in feats:
        with torch.inference_mode():
            expected, _ = offline(f[None], torch.tensor([f.shape[0]]))
        for chunk in chunks:
            label = f"{f.shape[0]} frames in chunks of {chunk}"
            got = run_streaming_onnx(session, layout, f, chunk)
            if got.shape != expected.shape or _greedy(got) != _greedy(expected):
                raise ExportCheckFailed(where, f"streaming parity check failed: greedy transcripts "
                                               f"differ ({label}); nothing published")
            diff = (got - expected).abs().nan_to_num(nan=float("inf")).max().item()
            if diff > worst:
                worst, worst_case = diff, label
    if worst > atol:
        raise ExportCheckFailed(where, f"streaming parity check failed: max |ONNX streaming - PyTorch| on "
                                       f"log-probs is {worst:.3g} > {atol:g} ({worst_case}); nothing published")
    return {"parity_max_abs_diff": worst, "parity_tolerance": atol, "parity_utterances": len(feats),
            "parity_chunks": list(chunks)}


def run_streaming_onnx(session, layout: StreamingLayout, feats: Tensor, chunk: int) -> Tensor:
    """The streaming graph over ``feats`` (T, F) in chunks of ``chunk`` frames, from zero states,
    as slimasr's runtime runs it: (1, T', V) log-probs."""
    step = OnnxStep(session, layout.describe())
    outs = [step(feats[i:i + chunk].numpy()) for i in range(0, feats.shape[0], chunk)]
    return torch.from_numpy(np.concatenate(outs))[None]


def _greedy(log_probs: Tensor) -> list[list[int]]:
    return greedy_decode(log_probs, torch.tensor([log_probs.shape[1]]))
