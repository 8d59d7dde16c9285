"""``slimasr export``: the bundle's contents, its checks, and what it refuses (one line, nothing written)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import onnx
from onnx import numpy_helper

from slimasr.cli import main
from slimasr.data.manifests import read_split
from slimasr.evaluate.metrics import ErrorRateStats
from slimasr.export import run as export_run
from slimasr.recognize import Recognizer
from slimasr.runtime import read_bundle
from slimasr.data.manifests import transcript

BUNDLE_KEYS = ["format", "format_version", "slimasr_version", "files", "source", "graph", "vocabulary",
               "features", "feature_dim", "normalizer", "subsampling_factor", "sherpa_onnx", "int8",
               "streaming", "results"]
RESULT_KEYS = ["parity_max_abs_diff", "parity_tolerance", "parity_cases", "parity_transcripts_equal",
               "wer_manifest", "wer_utterances", "wer_fp32", "wer_int8", "wer_streaming_int8", "latency_seconds",
               "latency_threads", "bytes_pytorch", "latency_ms_p50_pytorch", "latency_ms_p90_pytorch",
               "latency_cpu", "bytes_fp32", "latency_ms_p50_fp32", "latency_ms_p90_fp32", "bytes_int8",
               "latency_ms_p50_int8", "latency_ms_p90_int8"]


def pytorch_wer(model_dir: Path) -> float:
    """Greedy dev WER of the PyTorch model, scored as the export scores."""
    recognizer = Recognizer(model_dir)
    stats = ErrorRateStats(normalize=recognizer.frontend.normalize)
    for cut in read_split(model_dir.parent / "data", "dev"):
        stats.append([cut.id], [recognizer.transcribe(cut.load_audio().reshape(-1))], [transcript(cut)])
    return stats.summarize()["wer"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_bundle_holds_the_files_and_the_measured_results(trained, bundle):
    files = sorted(p.name for p in bundle.iterdir())
    assert files == ["bundle.json", "model.int8.onnx", "model.onnx", "tokens.txt"]
    info = json.loads((bundle / "bundle.json").read_text())
    assert list(info) == BUNDLE_KEYS and list(info["results"]) == RESULT_KEYS
    tokens = json.loads((trained / "tokenizer.json").read_text())["tokens"]
    assert info["vocabulary"] == {"kind": "char", "tokens": tokens, "blank_id": 0, "word_separator": " "}
    weights = (trained / "model.safetensors").read_bytes()
    assert info["source"]["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert info["feature_dim"] == 80 and info["subsampling_factor"] == 2
    assert info["features"]["num_mel_bins"] == 80 and info["features"]["dither"] == 0.0
    assert info["graph"]["cmvn_folded"] is True
    assert info["sherpa_onnx"] == {"compatible": True, "sample_rate": 16000, "feature_dim": 80}
    assert info["int8"] == {"op_types": ["MatMul", "LSTM"], "per_channel": False, "keep_head_fp32": True}
    results = info["results"]
    assert results["parity_max_abs_diff"] <= 1e-4 and results["parity_transcripts_equal"] is True
    assert len(results["parity_cases"]) == 8  # 3 synthetic + batch of 3, 3 real + batch of 3
    assert results["wer_utterances"] == 20 and results["wer_fp32"] == pytorch_wer(trained)
    assert results["wer_int8"] <= results["wer_fp32"] + 0.5  # it passed the gate
    assert results["bytes_int8"] < results["bytes_fp32"] / 2
    assert results["bytes_fp32"] == (bundle / "model.onnx").stat().st_size
    assert read_bundle(bundle).int8


def test_tokens_txt_is_symbol_id_with_blank_first_and_space_as_the_word_marker(bundle):
    lines = (bundle / "tokens.txt").read_text(encoding="utf-8").splitlines()
    tokens = json.loads((bundle / "bundle.json").read_text())["vocabulary"]["tokens"]
    assert lines[:2] == ["<blk> 0", "\u2581 1"] and tokens[1] == " "
    assert lines == [f"{'▁' if t == ' ' else t} {i}" for i, t in enumerate(tokens)]


def test_int8_quantizes_the_lstms_and_keeps_the_head_and_convs_fp32(bundle):
    """The tiny CRNN's MatMuls: the head only (kept fp32); every LSTM becomes int8."""
    graph = onnx.load(str(bundle / "model.int8.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"DynamicQuantizeLSTM", "Conv"} <= ops and not {"LSTM", "MatMulInteger", "ConvInteger"} & ops
    head = [n for n in graph.node if n.op_type == "MatMul"]
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    assert len(head) == 1 and weights[head[0].input[1]].shape == (64, 29)


def test_cli_exports_with_format_onnx_and_refuses_an_existing_bundle(trained, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["export", "--model", str(trained), "--out", str(out), "--format", "onnx"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "model.onnx", "tokens.txt"]
    capsys.readouterr()
    before = (out / "bundle.json").read_bytes()
    assert main(["export", "--model", str(trained), "--out", str(out), "--int8"]) == 1
    assert one_line_error(capsys) == f"error: {out}: already holds a bundle; pass --overwrite to replace it"
    assert (out / "bundle.json").read_bytes() == before and not (out / "model.int8.onnx").exists()
    assert main(["export", "--model", str(trained), "--out", str(out), "--int8", "--overwrite"]) == 0
    assert (out / "model.int8.onnx").is_file() and siblings(out) == ["b"]


def test_refuses_a_folder_that_is_not_a_bundle(trained, tmp_path, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", "--model", str(trained), "--out", str(out), "--overwrite"]) == 1
    assert "holds files that are not a slimasr bundle" in one_line_error(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert main(["export", "--model", str(trained), "--out", str(trained), "--overwrite"]) == 1
    assert "is the model directory itself" in one_line_error(capsys)


def test_a_model_folder_that_fails_to_load_is_one_line(trained, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    out = tmp_path / "b"
    assert main(["export", "--model", str(broken), "--out", str(out)]) == 1
    assert one_line_error(capsys).startswith(f"error: {broken / 'model.safetensors'}: ")
    assert main(["export", "--model", str(tmp_path / "missing"), "--out", str(out)]) == 1
    assert one_line_error(capsys).startswith(f"error: {tmp_path / 'missing'}: ")
    assert siblings(out) == ["broken"]


def test_failed_parity_says_by_how_much_and_publishes_nothing(trained, tmp_path, capsys, monkeypatch):
    real_export = export_run.export_onnx

    def corrupted(wrapper, path, opset, metadata=None):  # the blank's output bias off by 0.003
        real_export(wrapper, path, opset, metadata)
        model = onnx.load(str(path))
        bias = next(t for t in model.graph.initializer if t.name == "model.head.bias")
        values = numpy_helper.to_array(bias).copy()
        values[0] += 0.003
        bias.CopyFrom(numpy_helper.from_array(values, bias.name))
        onnx.save(model, str(path))

    monkeypatch.setattr(export_run, "export_onnx", corrupted)
    out = tmp_path / "b"
    assert main(["export", "--model", str(trained), "--out", str(out)]) == 1
    err = one_line_error(capsys)
    found = re.fullmatch(rf"error: {re.escape(str(trained))}: parity check failed: max \|ONNX - PyTorch\| "
                         r"on log-probs is ([0-9.e-]+) > 0.0001 \(.*\); nothing published", err)
    assert found and 0.001 < float(found.group(1)) <= 0.003  # the log-softmax spreads the 0.003
    assert siblings(out) == []


def test_int8_gate_refuses_a_wer_rise_and_publishes_nothing(trained, tmp_path, capsys, monkeypatch):
    def score(recognizer, cuts, batch):  # fp32 at 10%, int8 at 11%: a rise of 1.0
        return (11.0 if recognizer.model_path.name == "model.int8.onnx" else 10.0), 20

    monkeypatch.setattr(export_run, "score", score)
    out = tmp_path / "b"
    assert main(["export", "--model", str(trained), "--out", str(out), "--int8"]) == 1
    err = one_line_error(capsys)
    assert err == (f"error: {trained}: int8 WER 11.00% is 1.00 above fp32 10.00% on 20 utterances of "
                   f"{trained.parent / 'data' / 'dev_cuts.jsonl.gz'} (allowed: 0.5); nothing published: "
                   "export without --int8, or quantize fewer operators (int8_op_types=...)")
    assert siblings(out) == []
    assert main(["export", "--model", str(trained), "--out", str(out), "--int8",
                 "--max-wer-increase", "1.5"]) == 0
    assert json.loads((out / "bundle.json").read_text())["results"]["wer_int8"] == 11.0


def test_int8_without_utterances_to_score_asks_for_calib(trained, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(trained, moved)
    config = json.loads((moved / "config.json").read_text())
    config["provenance"]["data_dir"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(config))
    out = tmp_path / "b"
    assert main(["export", "--model", str(moved), "--out", str(out), "--int8"]) == 1
    assert "pass --calib MANIFEST" in one_line_error(capsys) and not out.exists()
    calib = trained.parent / "data" / "dev_cuts.jsonl.gz"
    assert main(["export", "--model", str(moved), "--out", str(out), "--int8", "--calib", str(calib)]) == 0
    assert json.loads((out / "bundle.json").read_text())["results"]["wer_manifest"] == str(calib)


def test_overwrite_replaces_only_the_bundle_and_its_results(trained, tmp_path, capsys):
    """--overwrite used to replace the whole folder: a file the user kept beside the bundle was
    deleted with it. Now the bundle's own files are replaced, the old graphs' evaluation results
    go with them (they describe the old graphs), and everything else stays."""
    out = tmp_path / "b"
    assert main(["export", "--model", str(trained), "--out", str(out), "--int8"]) == 0
    (out / "notes.txt").write_text("mine")
    (out / "plots").mkdir()
    for name in ("metrics.json", "metrics.int8.json", "eval_worst.int8.json"):
        (out / name).write_text("{}")
    assert main(["export", "--model", str(trained), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "model.onnx", "notes.txt", "plots",
                                                     "tokens.txt"]
    assert (out / "notes.txt").read_text() == "mine" and siblings(out) == ["b"]
    assert json.loads((out / "bundle.json").read_text())["files"]["model_int8"] is None


def test_a_second_writer_is_refused_while_the_bundle_is_written(trained, tmp_path, capsys):
    from slimasr.io import output_lock

    out = tmp_path / "b"
    with output_lock(out, "export"):
        assert main(["export", "--model", str(trained), "--out", str(out)]) == 1
        err = one_line_error(capsys)
    assert err.startswith(f"error: {out}: is being written by another process (slimasr export, pid ")
    assert not out.exists()  # the lock's holder made it; nothing else was written there


def test_an_interrupted_publish_is_an_earlier_bundle_to_overwrite(trained, tmp_path, capsys):
    """A folder holding bundle files without bundle.json (a publish cut short) is refused without
    --overwrite and replaced with it; a folder holding other files is never replaced."""
    out = tmp_path / "b"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"half")
    (out / "metrics.json").write_text("{}")
    assert main(["export", "--model", str(trained), "--out", str(out)]) == 1
    assert one_line_error(capsys) == f"error: {out}: already holds a bundle; pass --overwrite to replace it"
    assert main(["export", "--model", str(trained), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "model.onnx", "tokens.txt"]


def test_bundle_records_the_source_models_macs(trained, bundle):
    from slimasr.evaluate.cost import macs_per_second_audio
    from slimasr.models import load_model

    source = json.loads((bundle / "bundle.json").read_text())["source"]
    assert source["macs_per_second_audio"] == macs_per_second_audio(load_model(trained), 80, 3.0) > 0


def test_a_sparse_model_is_exported_dense_and_the_bundle_says_so(trained, bundle, tmp_path, caplog):
    """A model saved in the compact sparse form: the bundle holds its zeros as dense tensors,
    gives their share in source.sparse, and the export says so in one line."""
    import logging

    from slimasr.models import load_model, save_model
    from slimasr.prune import UnstructuredConfig, sparsify_, squash_

    sparse = tmp_path / "sparse"
    shutil.copytree(trained, sparse)
    model = load_model(trained)
    sparsify_(model, UnstructuredConfig(sparsity=0.8, scope="global"))
    squash_(model)
    config = json.loads((trained / "config.json").read_text())
    save_model(model, sparse, extra={k: v for k, v in config.items() if k not in
                                     ("format", "format_version", "architecture", "vocab_size", "model", "sparse")},
               compact=True)
    assert json.loads((sparse / "config.json").read_text())["sparse"] is True
    with caplog.at_level(logging.INFO):
        info = export_run.export_model(sparse, tmp_path / "bundle", export_run.ExportConfig())
    matrices = [p for p in model.parameters() if p.dim() > 1]
    share = sum(int((p == 0).sum()) for p in matrices) / sum(p.numel() for p in matrices)
    assert info["source"]["sparse"] == {"zero_share": share, "exported": "dense"} and share > 0.5
    assert [r.getMessage() for r in caplog.records if "stored sparse" in r.getMessage()] == [
        f"{sparse}: stored sparse ({100 * share:.1f}% of its weight matrices' entries are zero); the bundle "
        "holds them as dense tensors, zeros included (docs/export.md)"]
    graph = onnx.load(tmp_path / "bundle" / "model.onnx").graph
    assert not graph.sparse_initializer  # dense initializers only
    zeros = sum(int((numpy_helper.to_array(t) == 0).sum()) for t in graph.initializer)
    assert zeros >= sum(int((p == 0).sum()) for p in matrices)  # the zeros are in the graph
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text())["source"]["sparse"]["exported"] == "dense"
    assert json.loads((bundle / "bundle.json").read_text())["source"]["sparse"] is None  # a dense model
