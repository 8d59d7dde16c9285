"""``evaluate_model``: what cannot be scored is excluded, counted and reported, never scored."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from slimasr.errors import DataError
from slimasr.evaluate.run import EvalConfig, evaluate_model
from slimasr.train import train_model
from tests.data.fixtures import BAD_SAMPLES, write_bad_audio
from tests.train.helpers import SR, make_corpus, synth, tiny_recipe

FAST = EvalConfig(latency_seconds=0.5)  # quality is what these tests look at, not latency


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A barely trained model (quality does not matter here) that keeps accents in its text, so
    a reference can hold characters its vocabulary lacks."""
    root = tmp_path_factory.mktemp("evaluate")
    data = make_corpus(root / "data", n_train=6)
    recipe = tiny_recipe(epochs=1, max_steps=2)
    recipe["normalizer"] = {"strip_accents": False}
    train_model(recipe, data, root / "model", show_progress=False)
    return root / "model"


def _manifest(folder: Path, rows: list[tuple[str, np.ndarray | Path, str]]) -> Path:
    """A NeMo JSONL manifest of ``(name, audio or file, text)`` rows; audio is written as WAV."""
    lines = []
    for name, audio, text in rows:
        path = audio if isinstance(audio, Path) else folder / f"{name}.wav"
        if not isinstance(audio, Path):
            sf.write(path, audio, SR, subtype="PCM_16")
        duration = sf.info(str(path)).duration
        lines.append(json.dumps({"audio_filepath": str(path), "duration": duration, "text": text}))
    manifest = folder / "eval.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_unscorable_utterances_are_excluded_counted_and_reported(model_dir, tmp_path, caplog):
    """Empty references, 10 ms audio, references the model cannot write and NaN audio used to
    be scored silently (an empty reference and an empty hypothesis made a "correct sentence")."""
    rng = np.random.default_rng(0)
    bad = write_bad_audio(tmp_path / "nan.wav", "nan", audio=synth("lamp", rng))
    manifest = _manifest(tmp_path, [
        ("good1", synth("lamp on", rng), "lamp on"),
        ("good2", synth("fan", rng), "fan"),
        ("empty", synth("door", rng), "?!"),  # nothing left after normalization
        ("unknown", synth("red", rng), "éé"),  # not one character the model can write
        ("short", np.zeros(160, dtype=np.float32), "lamp on"),  # 10 ms
        ("nan", bad, "lamp"),
    ])
    with caplog.at_level(logging.WARNING):
        result = evaluate_model(model_dir, manifest, FAST, show_progress=False)
    assert result["excluded"] == {"empty_reference": 1, "too_short": 1, "unknown_characters": 1,
                                  "bad_audio": 1}
    assert result["num_utterances"] == 2 and result["num_ref_words"] == 3
    scored = [json.loads(line)["ref"] for line in
              (model_dir / "eval_utterances.jsonl").read_text().splitlines()]
    assert scored == ["lamp on", "fan"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0] == (f"warning: {manifest}: 4 of 6 utterances not scored (bad_audio 1, "
                           "empty_reference 1, too_short 1, unknown_characters 1); see "
                           "\"excluded\" in the metrics")
    assert f"  {bad}: {BAD_SAMPLES['nan']}" in warnings


def test_nothing_scorable_is_a_one_line_error(model_dir, tmp_path):
    rng = np.random.default_rng(1)
    manifest = _manifest(tmp_path, [("a", synth("on", rng), ""), ("b", synth("off", rng), "...")])
    with pytest.raises(DataError) as info:
        evaluate_model(model_dir, manifest, FAST, show_progress=False)
    assert str(info.value) == (f"{manifest}: no utterance can be scored (skipped 2 of 2: "
                               "empty_reference 2)")


def test_json_that_is_a_folder_is_refused_before_any_work(model_dir, tmp_path, monkeypatch):
    """``--json FOLDER`` used to fail only when writing it: after recognizing everything and
    replacing the metrics beside the model."""
    import shutil

    from slimasr.evaluate import run

    def no_work(*args, **kwargs):
        raise AssertionError("evaluate started working")

    monkeypatch.setattr(run, "load_runner", no_work)
    model = shutil.copytree(model_dir, tmp_path / "model")
    before = sorted(p.name for p in model.iterdir())
    folder = tmp_path / "results"
    folder.mkdir()
    manifest = model_dir.parent / "data" / "dev_cuts.jsonl.gz"
    with pytest.raises(DataError) as info:
        evaluate_model(model, manifest, FAST, json_out=folder, show_progress=False)
    assert str(info.value) == f"{folder}: is a folder; give a file name"
    assert sorted(p.name for p in model.iterdir()) == before and not any(folder.iterdir())


def test_sentencepiece_model_is_scored_on_words_without_piece_markers(tmp_path):
    """evaluate decoded sentencepiece pieces with a space as the word separator, so every
    hypothesis kept its "▁" (here "▁lamp" against the reference "lamp": WER 100)."""
    from tests.evaluate.helpers import WORD, constant_piece_model

    model = constant_piece_model(tmp_path)
    rng = np.random.default_rng(0)
    manifest = _manifest(tmp_path, [("a", synth("lamp", rng), "lamp"), ("b", synth("fan", rng), "fan")])
    result = evaluate_model(model, manifest, FAST, show_progress=False)
    hyps = [json.loads(line)["hyp"] for line in (model / "eval_utterances.jsonl").read_text().splitlines()]
    assert hyps == [WORD, WORD]
    assert result["wer"] == 50.0 and result["sentence_accuracy"] == 50.0


QUALITY = ("wer", "cer", "sentence_accuracy", "num_utterances", "excluded", "decode", "eval_config",
           "data_sha256", "model_sha256", "params", "macs_per_second_audio", "model_bytes")


def test_one_pass_scores_each_decoding_as_a_run_of_its_own_would(model_dir, tmp_path):
    """``also``: the network runs once and its outputs are decoded both ways (the pipeline's
    greedy results beside beam search's used to cost a second pass)."""
    from dataclasses import replace

    from slimasr.decode import DecodeConfig

    manifest = model_dir.parent / "data" / "dev_cuts.jsonl.gz"
    beam = replace(FAST, decode=DecodeConfig(method="beam"))
    alone = {"beam": evaluate_model(model_dir, manifest, beam, json_out=tmp_path / "b.json", show_progress=False),
             "greedy": evaluate_model(model_dir, manifest, FAST, json_out=tmp_path / "g.json", show_progress=False)}
    both = evaluate_model(model_dir, manifest, beam, json_out=tmp_path / "both.json", show_progress=False,
                          also=[(DecodeConfig(), tmp_path / "greedy.json")])
    greedy = json.loads((tmp_path / "greedy.json").read_text())
    assert both["decode"] == "beam" and greedy["decode"] == "greedy" and both["num_utterances"] > 0
    assert {k: both[k] for k in QUALITY} == {k: alone["beam"][k] for k in QUALITY}
    assert {k: greedy[k] for k in QUALITY} == {k: alone["greedy"][k] for k in QUALITY}


def test_latency_left_untimed_is_timed_later_into_the_same_results(model_dir, tmp_path):
    """evaluate with ``latency=False`` scores without timing (the pipeline scores beside training);
    ``time_models`` times the models afterwards, in turns, with the settings their metrics record."""
    import shutil
    from dataclasses import replace

    from slimasr.decode import DecodeConfig
    from slimasr.evaluate.run import evaluated_on, is_timed, time_models

    results = shutil.ignore_patterns("metrics.json", "greedy.json", "eval_*")  # of other tests
    model = shutil.copytree(model_dir, tmp_path / "model", ignore=results)
    other = shutil.copytree(model, tmp_path / "other")
    manifest = model_dir.parent / "data" / "dev_cuts.jsonl.gz"
    with pytest.raises(DataError, match="metrics.json: not found: evaluate the model before timing it$"):
        time_models([model])
    config = replace(FAST, latency=False)
    greedy_file = model / "greedy.json"
    result = evaluate_model(model, manifest, config, show_progress=False, also=[(DecodeConfig(), greedy_file)])
    assert result["latency_ms_p50"] is result["rtf"] is None and result["params"] > 0
    evaluate_model(other, manifest, replace(config, latency_seconds=0.3), show_progress=False)
    assert not is_timed(model) and not is_timed(other)
    timed = time_models([model, other], also=[[greedy_file]])
    assert [set(t) for t in timed] == [{"latency_ms_p50", "latency_ms_p90", "rtf", "latency_cpu"}] * 2
    for t, seconds in zip(timed, (0.5, 0.3)):  # each with its own recorded input length
        assert 0 < t["latency_ms_p50"] <= t["latency_ms_p90"]
        assert t["rtf"] == pytest.approx(t["latency_ms_p50"] / 1000 / seconds)
    for path, t in ((model / "metrics.json", timed[0]), (greedy_file, timed[0]), (other / "metrics.json", timed[1])):
        metrics = json.loads(path.read_text())
        assert {k: metrics[k] for k in t} == t and metrics["wer"] is not None
    assert is_timed(model) and is_timed(other) and evaluated_on(model, manifest, config)  # scoring still counts


def test_models_timed_in_turns_keep_their_ratio_when_the_machine_slows_down():
    """A machine that slows down late in the measurement (every call after the 32nd of 42 costs
    5x) leaves the ratio of two models timed in turns as it is (2x: each takes a quarter of its
    calls slow); timed one after the other, the second takes all the slow calls (half of its
    own) and looks 6x slower."""
    import time

    from slimasr.evaluate.cost import interleaved_latency

    calls = 0

    def model(cost_ms: float):
        def call() -> None:
            nonlocal calls
            calls += 1
            time.sleep(cost_ms / 1000 * (5 if calls > 32 else 1))
        return call

    def ratio(first: dict, second: dict) -> float:
        return second["latency_ms_p50"] / first["latency_ms_p50"]

    fast, slow = interleaved_latency([model(20.0), model(40.0)], seconds=1.0, warmup=1, runs=20)
    assert 1.6 < ratio(fast, slow) < 2.4  # sleep overshoots by a few ms on a busy machine
    calls = 0
    first, second = (interleaved_latency([model(ms)], seconds=1.0, warmup=1, runs=20)[0] for ms in (20.0, 40.0))
    assert ratio(first, second) > 4  # one after the other


def test_the_data_label_names_the_content_and_the_hash_the_very_file(tmp_path):
    """gzip stores when it wrote a file: the same cuts written twice differ in bytes. The table's
    label stays the same (a corpus synthesized again is the same data); the validity hash does
    not (results belong to the very file)."""
    import gzip
    import hashlib

    from slimasr.evaluate.run import data_signature

    content = b'{"id": "a"}\n'
    signatures = []
    for mtime, folder in ((1, "one"), (2, "two")):
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / "test_cuts.jsonl.gz"
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=mtime) as f:
            f.write(content)
        signatures.append(data_signature(path))
    one, two = signatures
    assert one["data"].split("@")[1] == two["data"].split("@")[1]
    assert one["data"] == "one/test_cuts.jsonl.gz@" + hashlib.sha256(content).hexdigest()[:8]
    assert one["data_sha256"] != two["data_sha256"]
    # a .gz that is not gzip: the label falls back to its bytes (its reader reports the file)
    bad = tmp_path / "one" / "bad_cuts.jsonl.gz"
    bad.write_bytes(b"not gzip")
    signature = data_signature(bad)
    assert signature["data"] == "one/bad_cuts.jsonl.gz@" + signature["data_sha256"][:8]
    assert signature["data_sha256"] == hashlib.sha256(b"not gzip").hexdigest()
