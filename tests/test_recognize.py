"""Inference is deterministic: the same file gives bit-identical log-probs and the same text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slimasr.cli import main
from slimasr.data.audio import load_audio
from slimasr.data.features import FeatureConfig
from slimasr.recognize import Recognizer
from slimasr.train import train_model
from tests.train.helpers import make_corpus, tiny_recipe


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recognize")
    data = make_corpus(root / "data", n_train=10)
    recipe = tiny_recipe(epochs=2)
    recipe["features"]["dither"] = FeatureConfig().dither  # the default: training dithers
    train_model(recipe, data, root / "model", show_progress=False)
    return root / "model"


def test_same_file_gives_bit_identical_log_probs(model_dir: Path) -> None:
    audio = load_audio(next((model_dir.parent / "data" / "audio").glob("dev-*.wav")))
    first = Recognizer(model_dir)
    assert first.frontend.features.dither > 0
    a, b = first.log_probs(audio), first.log_probs(audio)
    c = Recognizer(model_dir).log_probs(audio)  # a fresh load, too
    assert a.shape[0] > 0 and torch.equal(a, b) and torch.equal(a, c)


def test_transcribe_twice_prints_the_same(model_dir: Path, capsys) -> None:
    wavs = sorted(str(p) for p in (model_dir.parent / "data" / "audio").glob("dev-00*.wav"))[:3]
    assert main(["transcribe", "--model", str(model_dir), *wavs]) == 0
    once = capsys.readouterr().out
    assert main(["transcribe", "--model", str(model_dir), *wavs]) == 0
    assert capsys.readouterr().out == once and len(once.splitlines()) == 3


def test_transcribe_refuses_audio_with_nan_samples_in_one_line(model_dir: Path, tmp_path, capsys) -> None:
    """Ten NaN samples used to transcribe to empty text with exit 0."""
    from tests.data.fixtures import BAD_SAMPLES, write_bad_audio

    bad = write_bad_audio(tmp_path / "bad.wav", "nan")
    assert main(["transcribe", "--model", str(model_dir), str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"error: {bad}: {BAD_SAMPLES['nan']}\n"


def test_transcribe_refuses_a_model_with_nan_weights_in_one_line(model_dir: Path, tmp_path, capsys) -> None:
    """A model whose weights hold NaN used to transcribe everything to empty text with exit 0."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = load_file(broken / "model.safetensors")
    weights["head.bias"][0] = float("nan")
    save_file(weights, broken / "model.safetensors")
    wav = next((model_dir.parent / "data" / "audio").glob("dev-*.wav"))
    assert main(["transcribe", "--model", str(broken), str(wav)]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: {broken / 'model.safetensors'}: tensor head.bias holds 1 NaN/inf values "
                   f"of {weights['head.bias'].numel()} (a diverged or damaged model)\n")


@pytest.mark.parametrize("kind", ["nan", "inf", "loud"])
def test_recognizer_refuses_bad_arrays_as_load_audio_refuses_bad_files(model_dir: Path, tmp_path,
                                                                         kind) -> None:
    """An array with NaN/inf samples or an absurd peak, given from Python, used to be
    transcribed (to empty text) without a word."""
    import soundfile as sf

    from slimasr.errors import DataError
    from tests.data.fixtures import BAD_SAMPLES, write_bad_audio

    samples, _ = sf.read(str(write_bad_audio(tmp_path / "bad.wav", kind)), dtype="float32")
    with pytest.raises(DataError) as from_file:
        load_audio(tmp_path / "bad.wav")
    recognizer = Recognizer(model_dir)
    for call in (recognizer.transcribe, recognizer.log_probs):
        with pytest.raises(DataError) as from_array:
            call(samples)
        assert str(from_array.value) == f"audio: {BAD_SAMPLES[kind]}"
        assert from_array.value.problem == from_file.value.problem


def test_sentencepiece_model_transcribes_words_without_piece_markers(tmp_path, capsys) -> None:
    """Recognizer decoded sentencepiece pieces with a space as the word separator: "▁lamp"."""
    from tests.evaluate.helpers import WORD, constant_piece_model

    model = constant_piece_model(tmp_path)
    wav = next((tmp_path / "data" / "audio").glob("dev-*.wav"))
    assert Recognizer(model).transcribe(load_audio(wav)) == WORD
    capsys.readouterr()
    assert main(["transcribe", "--model", str(model), str(wav)]) == 0
    assert capsys.readouterr().out == f"{wav}\t{WORD}\n"
