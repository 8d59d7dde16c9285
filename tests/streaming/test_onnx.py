"""The streaming ONNX graph: written by slimasr export for a causal model, parity-checked, and run
by slimasr's onnxruntime runner with PyTorch streaming's output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slimasr.data.audio import load_audio
from slimasr.errors import DataError
from slimasr.export import ExportCheckFailed, ExportConfig, ExportWrapper, export_model
from slimasr.export.streaming import StreamingWrapper, check_streaming_parity, export_streaming_onnx
from slimasr.runtime.recognizer import OnnxRecognizer, open_session
from slimasr.runtime.streaming import OnnxStreamingRecognizer
from slimasr.streaming import StreamingRecognizer
from tests.streaming.helpers import CHUNK_MS, dev_audio
from tests.streaming.test_crnn import CAUSAL, random_causal


def test_export_writes_the_streaming_graph_of_a_causal_model(causal_bundle):
    info = json.loads((causal_bundle / "bundle.json").read_text())
    assert info["files"]["model_streaming"] == "model.streaming.onnx"
    assert (causal_bundle / "model.streaming.onnx").is_file()
    streaming = info["streaming"]
    assert streaming["chunk_frames"] == 16 and streaming["chunk_multiple"] == 2
    assert streaming["parity_max_abs_diff"] <= 1e-4 and streaming["parity_chunks"] == [16, 2]
    assert streaming["parity_utterances"] == 6  # 3 synthetic, 3 real
    # sherpa-onnx's layout: 6 states per conv and per recurrent layer, then 2
    names = [s["name"] for s in streaming["states"]]
    assert names == [*(f"conv{i}_{slot}" for i in (0, 1) for slot in
                       ("unused0", "unused1", "unused2", "unused3", "cache", "unused5")),
                     "rnn0_h", "rnn0_unused1", "rnn0_c", "rnn0_unused3", "rnn0_unused4", "rnn0_unused5",
                     "embed_unused", "processed_frames"]
    shapes = {s["name"]: s["shape"] for s in streaming["states"]}
    assert shapes["conv0_cache"] == [1, 80, 2] and shapes["conv1_cache"] == [1, 8 * 40, 2]  # C*F, k-1
    assert shapes["rnn0_h"] == shapes["rnn0_c"] == [1, 1, 32]  # nn.LSTM's (1, N, H)
    assert streaming["inputs"] == ["x", *(s["name"] for s in streaming["states"])]


@pytest.mark.parametrize("chunk_ms", CHUNK_MS)
def test_onnx_streaming_equals_pytorch_streaming(causal, causal_bundle, chunk_ms):
    ours = StreamingRecognizer(causal, chunk_ms=chunk_ms)
    onnx = OnnxStreamingRecognizer(causal_bundle, chunk_ms=chunk_ms)
    for path in dev_audio(causal):
        audio = load_audio(path)
        texts, log_probs = [], []
        for recognizer in (ours, onnx):
            stream = recognizer.stream(keep_log_probs=True)
            for start in range(0, len(audio), 1000):
                stream.accept(audio[start:start + 1000])
            texts.append(stream.finish())
            log_probs.append(stream.log_probs)
        assert texts[0] == texts[1] != ""
        assert np.abs(log_probs[0] - log_probs[1]).max() <= 1e-4


@pytest.mark.parametrize("name", CAUSAL)
def test_the_graph_carries_every_layout_of_state(tmp_path, name):
    """GRU (no c), kernel 5, x4 subsampling, one conv, layers of different widths."""
    model = random_causal(CAUSAL[name])
    wrapper = StreamingWrapper(model, None)
    path = export_streaming_onnx(wrapper, tmp_path / "s.onnx", opset=17, chunk_frames=4 * model.subsampling)
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(t, CAUSAL[name]["num_features"], generator=gen) for t in (9, 64)]
    result = check_streaming_parity(ExportWrapper(model, None), wrapper.layout, open_session(path), feats,
                                    [model.subsampling, 4 * model.subsampling], atol=1e-4)
    assert result["parity_max_abs_diff"] <= 1e-4


def test_a_graph_that_computes_something_else_is_not_published(tmp_path):
    model = random_causal(CAUSAL["lstm"])
    path = export_streaming_onnx(StreamingWrapper(model, None), tmp_path / "s.onnx", 17, chunk_frames=8)
    other = random_causal(CAUSAL["lstm"])
    torch.nn.init.normal_(other.head.bias)
    feats = [torch.randn(40, 40)]
    with pytest.raises(ExportCheckFailed, match=r"^m: streaming parity check failed: .*nothing published$"):
        check_streaming_parity(ExportWrapper(other, None), StreamingWrapper(model, None).layout,
                               open_session(path), feats, [8], atol=1e-4, where="m")


def test_a_graph_path_names_the_streaming_graph_of_its_precision(causal, causal_bundle, causal_int8_bundle):
    audio = load_audio(dev_audio(causal)[0])
    fp32 = OnnxStreamingRecognizer(causal_int8_bundle).transcribe(audio)  # the folder: fp32 by default
    assert fp32 != ""
    for name in ("model.streaming.onnx", "model.onnx"):
        recognizer = OnnxStreamingRecognizer(causal_int8_bundle / name)
        assert not recognizer.int8 and recognizer.transcribe(audio) == fp32
    for name in ("model.streaming.int8.onnx", "model.int8.onnx"):
        assert OnnxStreamingRecognizer(causal_int8_bundle / name).int8
    assert OnnxStreamingRecognizer(causal_int8_bundle, int8=True).int8
    with pytest.raises(DataError, match=r"bundle: has no model.streaming.int8.onnx \(export .* with --int8\)"):
        OnnxStreamingRecognizer(causal_bundle, int8=True)
    with pytest.raises(DataError, match=r"other.onnx: not a bundle graph"):
        OnnxStreamingRecognizer(causal_bundle / "other.onnx")


def test_int8_export_quantizes_the_streaming_graph_and_scores_it(causal, causal_int8_bundle):
    import onnx

    info = json.loads((causal_int8_bundle / "bundle.json").read_text())
    assert info["files"]["model_streaming_int8"] == info["streaming"]["int8_file"] == "model.streaming.int8.onnx"
    ops = {n.op_type for n in onnx.load(str(causal_int8_bundle / "model.streaming.int8.onnx")).graph.node}
    assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops  # its one MatMul, the head, stays fp32
    fp32 = (causal_int8_bundle / "model.streaming.onnx").stat().st_size
    assert (causal_int8_bundle / "model.streaming.int8.onnx").stat().st_size < fp32 / 2
    # the gate scored the graph it ships: streaming it here in the export's chunks gives that WER
    from slimasr.data.manifests import load_cuts
    from slimasr.export.run import score

    recognizer = OnnxStreamingRecognizer(causal_int8_bundle, chunk_ms=160, int8=True)
    cuts = load_cuts(causal.parent / "data" / "dev_cuts.jsonl.gz").subset(first=3)
    wer, count = score(recognizer, cuts, 1, OnnxRecognizer(causal_int8_bundle).frontend.normalize)
    assert count == info["results"]["wer_utterances"] == 3
    assert wer == info["results"]["wer_streaming_int8"]


def test_the_wer_gate_covers_the_streaming_int8_graph():
    from slimasr.export.run import check_wer_gate

    wer = {"wer_fp32": 10.0, "wer_int8": 10.2, "wer_streaming_int8": 10.9, "wer_utterances": 5,
           "wer_manifest": "dev"}
    check_wer_gate(wer, ExportConfig(max_wer_increase=1.0), Path("m"))
    with pytest.raises(ExportCheckFailed, match=r"^m: streaming int8 WER 10.90% is 0.90 above fp32 10.00%"):
        check_wer_gate(wer, ExportConfig(max_wer_increase=0.5), Path("m"))


def test_a_bundle_of_a_non_causal_model_has_no_streaming_graph(bidirectional, tmp_path):
    out = tmp_path / "bundle"
    info = export_model(bidirectional, out, ExportConfig(latency_seconds=0.5))
    assert info["streaming"] is None and info["files"]["model_streaming"] is None
    assert not (out / "model.streaming.onnx").exists()
    with pytest.raises(DataError, match="bundle.json: has no streaming graph .*: its model is not causal"):
        OnnxStreamingRecognizer(out)
