"""The onnxruntime recognizer: same transcripts as the PyTorch model, chosen by folder contents."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from slimasr.cli import main
from slimasr.data.audio import load_audio
from slimasr.errors import DataError
from slimasr.recognize import Recognizer, load_recognizer
from slimasr.runtime import OnnxRecognizer, read_bundle, tokens_txt
from tests.export.helpers import dev_audio


def test_onnx_recognizer_matches_the_pytorch_recognizer_on_every_dev_utterance(trained, bundle):
    torch_rec, onnx_rec = Recognizer(trained), OnnxRecognizer(bundle)
    texts = []
    for path in dev_audio(trained):
        audio = load_audio(path)
        expected, got = torch_rec.log_probs(audio), onnx_rec.log_probs(audio)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-4
        texts.append(onnx_rec.transcribe(audio))
        assert texts[-1] == torch_rec.transcribe(audio)
    assert all(texts) and len(texts) == 20


def test_load_recognizer_picks_the_runtime_by_folder_contents(trained, bundle):
    assert type(load_recognizer(trained)) is Recognizer
    assert type(load_recognizer(bundle)) is OnnxRecognizer
    int8 = load_recognizer(bundle / "model.int8.onnx")
    assert type(int8) is OnnxRecognizer and int8.model_path == bundle / "model.int8.onnx"
    assert load_recognizer(bundle).model_path == bundle / "model.onnx"


def test_transcribe_cli_on_a_bundle_prints_what_the_model_dir_prints(trained, bundle, capsys):
    wavs = [str(p) for p in dev_audio(trained)[:4]]
    assert main(["transcribe", "--model", str(trained), *wavs]) == 0
    expected = capsys.readouterr().out
    assert main(["transcribe", "--model", str(bundle), *wavs]) == 0
    assert capsys.readouterr().out == expected and len(expected.splitlines()) == 4


def test_batch_call_and_latency_keys(bundle, trained):
    rec = OnnxRecognizer(bundle)
    audios = [load_audio(p) for p in dev_audio(trained)[:3]]
    assert rec.transcribe_batch(audios) == [rec.transcribe(a) for a in audios]
    latency = rec.latency(seconds=1.0, warmup=1, runs=3)
    assert list(latency) == ["latency_ms_p50", "latency_ms_p90", "rtf", "latency_cpu"] and latency["latency_ms_p50"] > 0


def test_a_broken_bundle_is_a_one_line_error(bundle, tmp_path):
    broken = tmp_path / "b"
    broken.mkdir()
    info = json.loads((bundle / "bundle.json").read_text())
    (broken / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"model.onnx: file not found \(the bundle is incomplete\)"):
        read_bundle(broken)
    (broken / "bundle.json").write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(DataError, match="unsupported format_version 99"):
        read_bundle(broken)
    with pytest.raises(DataError, match="has no model.int8.onnx"):
        del info["files"]["model_int8"]
        (broken / "bundle.json").write_text(json.dumps(info))
        (broken / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes())
        OnnxRecognizer(broken / "model.int8.onnx")


def test_tokens_txt_writes_pieces_as_they_are_and_a_space_as_the_word_marker():
    assert tokens_txt(["<blk>", "<unk>", "\u2581on", "n", "'"]) == "<blk> 0\n<unk> 1\n\u2581on 2\nn 3\n' 4\n"
    assert tokens_txt(["<blk>", " ", "a"]) == "<blk> 0\n\u2581 1\na 2\n"


def test_onnx_recognizer_refuses_bad_arrays_in_one_line(bundle, trained):
    audio = load_audio(dev_audio(trained)[0])
    audio[100:110] = float("nan")
    rec = OnnxRecognizer(bundle)
    for call in (rec.transcribe, rec.log_probs, lambda a: rec.transcribe_batch([a])):
        with pytest.raises(DataError) as info:
            call(audio)
        assert str(info.value) == "audio: holds 10 NaN/inf samples"


def test_output_lengths_are_the_graphs_and_the_models(bundle, trained):
    from slimasr.models import load_model

    lens = torch.arange(1, 700, dtype=torch.int64)
    expected = load_model(trained).output_lengths(lens).numpy()
    for graph in ("model.onnx", "model.int8.onnx"):
        assert (OnnxRecognizer(bundle / graph).output_lengths(lens) == expected).all()


# ---- evaluate and report on a bundle ---------------------------------------------------------


def eval_manifest(trained, tmp_path) -> Path:
    """NeMo JSONL: five dev utterances, plus one of each kind evaluate excludes."""
    from tests.data.fixtures import write_bad_audio

    data = trained.parent / "data"
    rows = [(str(p), 1.0, text) for p, text in zip(dev_audio(trained)[:5], dev_texts(data)[:5])]
    silence = tmp_path / "short.wav"
    sf.write(silence, np.zeros(160, dtype=np.float32), 16000)
    rows += [(str(dev_audio(trained)[5]), 1.0, "?!"), (str(silence), 0.01, "lamp on"),
             (str(write_bad_audio(tmp_path / "nan.wav", "nan")), 0.5, "lamp")]
    manifest = tmp_path / "eval.jsonl"
    manifest.write_text("".join(json.dumps({"audio_filepath": a, "duration": sf.info(a).duration,
                                            "text": t}) + "\n" for a, _, t in rows))
    return manifest


def dev_texts(data: Path) -> list[str]:
    """The dev transcripts in the order of ``dev_audio`` (sorted file names = sorted ids)."""
    from slimasr.data.manifests import read_split

    return [c.supervisions[0].text for c in sorted(read_split(data, "dev"), key=lambda c: c.id)]


def test_evaluate_a_bundle_gives_the_pytorch_keys_scored_the_same_way(trained, bundle, tmp_path):
    from slimasr.evaluate.run import EvalConfig, evaluate_model, evaluated_on

    model, copy = shutil.copytree(trained, tmp_path / "model"), shutil.copytree(bundle, tmp_path / "b")
    manifest, config = eval_manifest(trained, tmp_path), EvalConfig(latency_seconds=3.0)
    torch_result = evaluate_model(model, manifest, config, show_progress=False)
    fp32 = evaluate_model(copy, manifest, config, show_progress=False)
    int8 = evaluate_model(copy / "model.int8.onnx", manifest, config, show_progress=False)
    assert list(fp32) == list(torch_result) == list(int8)
    assert torch_result["excluded"] == {"empty_reference": 1, "too_short": 1, "unknown_characters": 0,
                                        "bad_audio": 1}
    info = json.loads((copy / "bundle.json").read_text())
    for result, graph in ((fp32, "model.onnx"), (int8, "model.int8.onnx")):
        assert result["excluded"] == torch_result["excluded"] and result["num_utterances"] == 5
        assert result["runtime"] == "onnxruntime" and result["model_file"] == graph
        assert result["model_bytes"] == (copy / graph).stat().st_size
        assert result["model_sha256"] == hashlib.sha256((copy / graph).read_bytes()).hexdigest()
        assert result["params"] == info["source"]["params"] == torch_result["params"]
        assert result["macs_per_second_audio"] == torch_result["macs_per_second_audio"]
        assert result["latency_ms_p50"] > 0 and result["rtf"] == result["latency_ms_p50"] / 3000
        assert result["nonzero_params"] is None and result["peak_memory_mb"] is None
        assert evaluated_on(copy / graph, manifest, config)
    assert fp32["wer"] == torch_result["wer"] and fp32["cer"] == torch_result["cer"]
    assert torch_result["runtime"] == "pytorch" and torch_result["model_file"] == "model.safetensors"
    assert sorted(p.name for p in copy.iterdir()) == [
        "bundle.json", "eval_utterances.int8.jsonl", "eval_utterances.jsonl", "eval_worst.int8.json",
        "eval_worst.json", "metrics.int8.json", "metrics.json", "model.int8.onnx", "model.onnx",
        "tokens.txt"]
    assert json.loads((copy / "metrics.int8.json").read_text()) == int8


def test_report_puts_each_evaluated_graph_beside_the_models(trained, bundle, tmp_path, capsys):
    manifest = str(trained.parent / "data" / "dev_cuts.jsonl.gz")
    model, copy = shutil.copytree(trained, tmp_path / "model"), shutil.copytree(bundle, tmp_path / "b")
    assert main(["report", str(copy), "--out", str(tmp_path / "r")]) == 1
    assert capsys.readouterr().err == (f"error: {copy / 'metrics.json'}: no evaluation results; run "
                                       "`slimasr evaluate` on this bundle (or its model.int8.onnx) first\n")
    for path in (model, copy, copy / "model.int8.onnx"):
        assert main(["evaluate", "--model", str(path), "--data", manifest, "--quiet",
                     "latency_seconds=0.5"]) == 0
    capsys.readouterr()
    assert main(["report", str(model), str(copy), str(copy / "model.int8.onnx"),
                 "--out", str(tmp_path / "r")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["model"] for r in rows] == ["model", "b (fp32)", "b (int8)", "b (int8)"]
    assert [r["model_bytes"] for r in rows] == [(model / "model.safetensors").stat().st_size,
                                                (copy / "model.onnx").stat().st_size,
                                                (copy / "model.int8.onnx").stat().st_size,
                                                (copy / "model.int8.onnx").stat().st_size]
    assert [r["size_ratio"] for r in rows] == [1.0] * 4  # the same parameters, fewer bytes
    table = capsys.readouterr().out
    assert "| b (int8) |" in table and "| b (fp32) |" in table


def test_a_sentencepiece_bundle_ships_its_tokenizer_and_writes_words(tmp_path):
    """A bundle of a bpe model carries tokenizer.model (evaluate's exclusion rules encode
    references with it); its text has no piece markers, in transcribe and evaluate alike."""
    from slimasr.evaluate.run import EvalConfig, evaluate_model
    from slimasr.export import ExportConfig, export_model
    from tests.evaluate.helpers import PIECE, WORD, constant_piece_model

    model = constant_piece_model(tmp_path)
    out = tmp_path / "b"
    export_model(model, out, ExportConfig())
    assert (out / "tokenizer.model").read_bytes() == (model / "tokenizer.model").read_bytes()
    info = json.loads((out / "bundle.json").read_text())
    assert info["files"]["tokenizer_model"] == "tokenizer.model"
    assert info["vocabulary"]["kind"] == "bpe" and info["vocabulary"]["word_separator"] == "\u2581"
    assert PIECE in (out / "tokens.txt").read_text(encoding="utf-8").split()
    audio = load_audio(next((tmp_path / "data" / "audio").glob("dev-*.wav")))
    assert OnnxRecognizer(out).transcribe(audio) == Recognizer(model).transcribe(audio) == WORD
    result = evaluate_model(out, tmp_path / "data" / "dev_cuts.jsonl.gz", EvalConfig(latency_seconds=0.5),
                            show_progress=False)
    hyps = {json.loads(line)["hyp"] for line in (out / "eval_utterances.jsonl").read_text().splitlines()}
    assert hyps == {WORD} and result["num_utterances"] == 10
