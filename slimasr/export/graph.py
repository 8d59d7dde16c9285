"""The ONNX graph: global CMVN folded in front of the model, exported with dynamic N and T.

    wrapper = ExportWrapper(load_model(model_dir), Frontend.load(model_dir).cmvn)
    export_onnx(wrapper, "bundle/model.onnx", opset=17, metadata={"vocab_size": "30"})

Graph contract (sherpa-onnx's offline CTC contract, icefall's names)::

    x              float32 (N, T, F)   raw log-mel fbank (no CMVN: the graph applies it)
    x_lens         int64   (N,)        valid frames of each utterance
    log_probs      float32 (N, T', V)  log-softmax over the vocabulary, blank = 0
    log_probs_len  int64   (N,)        valid output frames

Exporter: the TorchScript exporter (``dynamo=False``). Measured with torch 2.13: it exports
every family with ONNX LSTM/GRU ops and dynamic N and T, max |ONNX - PyTorch| about 5e-7; the
torch.export-based exporter exported the DNN but failed on the CRNN (uni-GRU and Conformer would
not convert; the BiLSTM graph failed in onnxruntime at batch 1).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from slimasr.data.features import GlobalCmvn
from slimasr.models.common import AcousticModel
from slimasr.runtime.bundle import INPUT_NAMES, OUTPUT_NAMES

EXAMPLE_FRAMES = 200  # frames of the example batch the exporter traces (any length works after)
DYNAMIC_AXES = {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"},
                "log_probs": {0: "N", 1: "T_out"}, "log_probs_len": {0: "N"}}


class ExportWrapper(nn.Module):
    """What the graph computes: ``(x - mean) / std`` (global CMVN), then the model.

    x: (N, T, F) raw fbank, x_lens: (N,) -> log_probs (N, T', V), out_lens (N,). Without CMVN the
    mean is 0 and the std 1. Padded frames need no particular value: the model masks by length.
    """

    def __init__(self, model: AcousticModel, cmvn: GlobalCmvn | None):
        super().__init__()
        self.model = exportable_(model).eval()
        dim = model.config.num_features
        self.register_buffer("mean", cmvn.mean.clone() if cmvn is not None else torch.zeros(dim))
        self.register_buffer("std", cmvn.std.clone() if cmvn is not None else torch.ones(dim))

    @property
    def num_features(self) -> int:
        return int(self.mean.numel())

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        return self.model((x - self.mean) / self.std, x_lens)


def exportable_(model: AcousticModel) -> AcousticModel:
    """In place: switch off sequence packing in recurrent layers (it only skips padding compute;
    valid frames are unchanged, and the exporter cannot trace ``pack_padded_sequence`` with
    unsorted lengths)."""
    for module in model.modules():
        if hasattr(module, "pack"):
            module.pack = False
    return model


def export_onnx(wrapper: ExportWrapper, path: str | Path, opset: int,
                metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``wrapper`` as an ONNX graph at ``path`` (one file, weights inside) with dynamic N
    and T, then add ``metadata`` as the model's metadata_props (strings)."""
    frames = torch.tensor([EXAMPLE_FRAMES, EXAMPLE_FRAMES // 2], dtype=torch.int64)
    x = torch.zeros(2, EXAMPLE_FRAMES, wrapper.num_features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(wrapper.eval(), (x, frames), str(path), input_names=list(INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES), dynamic_axes=DYNAMIC_AXES,
                          opset_version=opset, dynamo=False)
    if metadata:
        add_metadata(path, metadata)
    return Path(path)


def add_metadata(path: str | Path, metadata: Mapping[str, str]) -> None:
    """Set string key/value pairs in an ONNX file's metadata_props (replacing same keys)."""
    import onnx

    model = onnx.load(str(path))
    keep = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=str(value))
    onnx.save(model, str(path))
