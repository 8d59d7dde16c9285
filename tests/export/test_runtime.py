"""The onnxruntime recognizer: same transcripts as the PyTorch model, chosen by folder contents."""

from __future__ import annotations

import json

import pytest

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
    assert list(latency) == ["latency_ms_p50", "latency_ms_p90", "rtf"] and latency["latency_ms_p50"] > 0


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
