"""Importers on tiny corpora in the real layouts (with bad files), manifests, load_cuts."""

from __future__ import annotations

import gzip
import json
import logging

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, MonoCut, Recording, RecordingSet, SupervisionSet

from slimasr.data import importers
from slimasr.data.audio import UNREADABLE_MESSAGE
from slimasr.data.importers import import_jsonl, import_librispeech, import_timit
from slimasr.data.manifests import load_cuts, read_split, write_split
from slimasr.errors import DataError
from tests.data.fixtures import make_librispeech, make_nemo, make_timit, write_audio

LOGGER = "slimasr.data.importers"


def _ids(cuts) -> list[str]:
    return sorted(c.id for c in cuts)


def _check_data_dir(out, expected, meta):
    """The data-directory contract: manifests per split, corpus.json, skip counts, 16 kHz mono."""
    assert json.loads((out / "corpus.json").read_text()) == meta
    assert meta["skipped"] == expected.skipped
    assert set(meta["splits"]) == set(expected.splits)
    for split, ids in {**expected.splits, **expected.parts}.items():
        cuts = read_split(out, split)
        assert cuts.is_lazy and _ids(cuts) == ids, split
        recordings = RecordingSet.from_file(out / f"{split}_recordings.jsonl.gz")
        supervisions = SupervisionSet.from_file(out / f"{split}_supervisions.jsonl.gz")
        assert len(supervisions) == len(ids)
        for cut in cuts:
            assert type(cut) is MonoCut and cut.sampling_rate == 16000 and cut.num_channels == 1
            assert (
                len(cut.supervisions) == 1
                and cut.supervisions[0].text.strip()
                and cut.supervisions[0].speaker
            )
            source = cut.recording.sources[0].source
            assert source.startswith("/") and not source.startswith(
                str(out)
            )  # original file, not a copy
            assert cut.recording.id in recordings
    for split, summary in meta["splits"].items():
        assert summary["num_cuts"] == len(expected.splits[split])
    assert not (out / "audio").exists()


def _bad_lines(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
    ]


# ---------------------------------------------------------------------------------------------
# LibriSpeech


def test_librispeech_import_skips_bad_files_and_maps_parts_to_splits(tmp_path, caplog):
    src, expected = make_librispeech(tmp_path)
    out = tmp_path / "out"
    meta = import_librispeech(src, out, show_progress=False)
    _check_data_dir(out, expected, meta)
    assert meta["split_parts"] == {
        "train": ["train-clean-100", "train-clean-360"],
        "dev": ["dev-clean"],
        "test": ["test-clean"],
    }
    assert meta["corpus"] == "librispeech" and meta["source"] == str(src.absolute())

    lines = _bad_lines(caplog)
    assert len(lines) == sum(expected.skipped.values()) and all("\n" not in line for line in lines)
    folder = src / "train-clean-100" / "19" / "198"
    assert sorted(lines) == sorted(
        [
            f"{folder}/19-198.trans.txt:4: empty transcript for 19-198-0003",
            f"{folder}/19-198-0005.flac: {UNREADABLE_MESSAGE}",
            f"{folder}/19-198-0006.flac: empty file (0 bytes)",
            f"{folder}/19-198-0007.flac: audio file not found",
        ]
        + [
            line
            for line in lines
            if line.startswith(f"{folder}/19-198-0004.flac: corrupt or truncated")
        ]
    )

    cuts = {c.id: c for c in read_split(out, "train")}
    assert cuts["19-198-0000"].supervisions[0].text == "HELLO WORLD"
    assert cuts["19-198-0000"].supervisions[0].speaker == "19"
    resampled = cuts["19-198-0001"].load_audio()  # 0.8 s written at 44.1 kHz
    assert resampled.shape == (1, 12800) and resampled.dtype == np.float32
    stereo, _ = sf.read(folder / "19-198-0002.flac", dtype="float32")
    np.testing.assert_allclose(cuts["19-198-0002"].load_audio()[0], stereo.mean(axis=1), atol=1e-7)


def test_librispeech_refuses_to_overwrite_a_complete_corpus(tmp_path):
    src, expected = make_librispeech(tmp_path)
    out = tmp_path / "out"
    import_librispeech(src, out, show_progress=False)
    before = (out / "corpus.json").read_text()
    with pytest.raises(DataError, match=f"^{out}: already holds a complete corpus"):
        import_librispeech(src, out, show_progress=False)
    assert (out / "corpus.json").read_text() == before
    (out / "mine_cuts.jsonl.gz").write_bytes(b"")  # a user's file: never touched
    meta = import_librispeech(src, out, overwrite=True, show_progress=False)
    _check_data_dir(out, expected, meta)

    manifest, nemo = make_nemo(tmp_path)  # a jsonl import replaces only the split it names
    dev_before = (out / "dev_cuts.jsonl.gz").read_bytes()
    meta = import_jsonl(manifest, out, overwrite=True, show_progress=False)
    assert set(meta["splits"]) == set(expected.splits) and meta["corpus"] == "librispeech+jsonl"
    assert meta["source"]["train"] == str(manifest) and meta["source"]["dev"] == str(src.absolute())
    assert _ids(read_split(out, "train")) == nemo.splits["train"]
    assert (out / "dev_cuts.jsonl.gz").read_bytes() == dev_before
    assert json.loads((out / "corpus.json").read_text()) == meta
    assert (out / "mine_cuts.jsonl.gz").exists()


def test_corpus_json_is_written_last(tmp_path, monkeypatch):
    src, _ = make_librispeech(tmp_path)
    calls = []

    def failing_write_split(out_dir, split, *args):
        calls.append(split)
        if len(calls) == 3:
            raise OSError("disk full")

    monkeypatch.setattr(importers, "write_split", failing_write_split)
    with pytest.raises(OSError, match="disk full"):
        import_librispeech(src, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out" / "corpus.json").exists()


@pytest.mark.parametrize("importer", [import_librispeech, import_timit])
def test_missing_source_or_layout_stops_before_writing(tmp_path, importer):
    out = tmp_path / "out"
    with pytest.raises(DataError, match="source folder not found"):
        importer(tmp_path / "nowhere", out, show_progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        DataError, match=f"^{tmp_path / 'empty'}: no (LibriSpeech parts|TIMIT layout) found"
    ):
        importer(tmp_path / "empty", out, show_progress=False)
    assert not out.exists()


def test_a_layout_without_utterances_stops_before_writing(tmp_path):
    (tmp_path / "LibriSpeech" / "dev-clean").mkdir(parents=True)
    with pytest.raises(DataError, match=f"^{tmp_path / 'LibriSpeech'}: no utterances found$"):
        import_librispeech(tmp_path / "LibriSpeech", tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_nothing_usable_stops_before_writing(tmp_path, caplog):
    folder = tmp_path / "LibriSpeech" / "dev-clean" / "1" / "2"
    folder.mkdir(parents=True)
    (folder / "1-2.trans.txt").write_text("1-2-0000 MISSING AUDIO\n1-2-0001\n")
    with pytest.raises(
        DataError,
        match="no usable utterances \\(skipped 2 of 2: empty_transcript 1, missing_audio 1\\)",
    ):
        import_librispeech(tmp_path / "LibriSpeech", tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()
    assert len(_bad_lines(caplog)) == 2


def test_progress_bar_runs(tmp_path):
    src, expected = make_librispeech(tmp_path)
    meta = import_librispeech(src, tmp_path / "out", show_progress=True, num_jobs=1)
    assert meta["skipped"] == expected.skipped


# ---------------------------------------------------------------------------------------------
# TIMIT


@pytest.mark.parametrize("ldc_layout", [False, True])
def test_timit_import_follows_lhotse_speaker_splits(tmp_path, ldc_layout, caplog):
    src, expected = make_timit(tmp_path, ldc_layout=ldc_layout)
    out = tmp_path / "out"
    meta = import_timit(src, out, show_progress=False)
    _check_data_dir(out, expected, meta)
    cut = {c.id: c for c in read_split(out, "train")}["FCJF0-SA1"]
    assert (
        cut.supervisions[0].text == "She had your dark suit."
        and cut.supervisions[0].speaker == "FCJF0"
    )
    assert [a.symbol for a in cut.supervisions[0].alignment["phone"]] == ["sil", "sh", "iy"]
    assert cut.load_audio().shape == (1, 8000)
    speaker = src / ("" if ldc_layout else "data") / "TRAIN" / "DR1" / "FCJF0"
    lines = _bad_lines(caplog)
    assert (
        f"{speaker / 'SX1.WAV'}: truncated: header says 8000 samples, the file holds 3744" in lines
    )
    assert f"{speaker / 'SX3.TXT'}: empty transcript" in lines
    assert any(
        line.startswith(f"{speaker / 'SX2.WAV'}: cannot read its .TXT/.WRD/.PHN") for line in lines
    )


# ---------------------------------------------------------------------------------------------
# NeMo JSONL


def test_jsonl_import_resolves_paths_resamples_and_cuts_segments(tmp_path, caplog):
    manifest, expected = make_nemo(tmp_path)
    out = tmp_path / "out"
    meta = import_jsonl(manifest, out, show_progress=False)
    _check_data_dir(out, expected, meta)
    assert meta["source"] == {"train": str(manifest)}
    audio = manifest.parent / "audio"
    cuts = {c.id: c for c in read_split(out, "train")}
    assert cuts["a"].recording.sources[0].source == str(audio / "a.wav")
    assert cuts["b"].load_audio().shape == (1, 9600) and cuts["b"].supervisions[0].speaker == "spk2"
    assert cuts["c"].load_audio().shape == (1, 11200)
    long_audio, _ = sf.read(audio / "long.wav", dtype="float32")
    second = cuts["long-001000"]
    assert (second.start, second.duration, second.supervisions[0].text) == (1.0, 1.0, "second half")
    np.testing.assert_array_equal(second.load_audio()[0], long_audio[16000:32000])
    recordings = RecordingSet.from_file(out / "train_recordings.jsonl.gz")
    assert sorted(recordings.ids) == ["a", "b", "c", "long"]
    supervisions = {s.id: s for s in SupervisionSet.from_file(out / "train_supervisions.jsonl.gz")}
    assert (supervisions["long-001000"].recording_id, supervisions["long-001000"].start) == (
        "long",
        1.0,
    )
    lines = _bad_lines(caplog)
    assert (
        f"{manifest}:8: segment 1.50-2.50 s lies past the end of {audio / 'long.wav'} (2.00 s)"
        in lines
    )
    assert f"{manifest}:9: empty transcript ({audio / 'f.wav'})" in lines
    assert f"{manifest}:11: {audio / 'a.wav'} is listed twice for the same segment" in lines
    assert f"{audio / 'e.wav'}: audio file not found" in lines


def test_jsonl_import_of_several_splits(tmp_path):
    a = write_audio(tmp_path / "a.wav", 0.5)
    b = write_audio(tmp_path / "b.wav", 0.5, seed=1)
    (tmp_path / "train.jsonl").write_text(
        json.dumps({"audio_filepath": "a.wav", "duration": 0.5, "text": "x"}) + "\n"
    )
    (tmp_path / "test.jsonl").write_text(
        json.dumps({"audio_filepath": str(b), "duration": 0.5, "text": "y"}) + "\n"
    )
    meta = import_jsonl(
        {"train": tmp_path / "train.jsonl", "test": tmp_path / "test.jsonl"},
        tmp_path / "out",
        show_progress=False,
    )
    assert set(meta["splits"]) == {"train", "test"} and meta["skipped"] == {}
    assert [c.recording.sources[0].source for c in read_split(tmp_path / "out", "train")] == [
        str(a)
    ]
    assert _ids(read_split(tmp_path / "out", "test")) == ["b"]
    with pytest.raises(DataError, match="this corpus has no 'dev' split"):
        read_split(tmp_path / "out", "dev")
    meta = import_jsonl(
        tmp_path / "test.jsonl", tmp_path / "out2", split="dev", show_progress=False
    )
    assert list(meta["splits"]) == ["dev"]


@pytest.mark.parametrize(
    "line, problem",
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"audio_filepath": "a.wav", "duration": 1.0}', "'text' must be a string"),
        ('{"text": "hi", "duration": 1.0}', "'audio_filepath' must be a string"),
        (
            '{"audio_filepath": "a.wav", "duration": "long", "text": "hi"}',
            "'duration' must be a non-negative number",
        ),
        (
            '{"audio_filepath": "a.wav", "duration": -1, "text": "hi"}',
            "'duration' must be a non-negative number",
        ),
        (
            '{"audio_filepath": "a.wav", "offset": 0.5, "text": "hi"}',
            "an entry with 'offset' needs a 'duration'",
        ),
    ],
)
def test_malformed_jsonl_line_names_file_and_line_and_writes_nothing(tmp_path, line, problem):
    write_audio(tmp_path / "a.wav", 0.5)
    good = json.dumps({"audio_filepath": "a.wav", "duration": 0.5, "text": "ok"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(f"{good}\n\n{line}\n")
    for read in (
        lambda: import_jsonl(manifest, tmp_path / "out", show_progress=False),
        lambda: load_cuts(manifest),
    ):
        with pytest.raises(DataError) as info:
            read()
        assert str(info.value).startswith(f"{manifest}:3: {problem}")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# load_cuts, read_split, write_split


def test_load_cuts_reads_lhotse_manifests_lazily_with_relative_paths(tmp_path):
    folder = tmp_path / "set"
    write_audio(folder / "wavs" / "a.wav", 0.5, sr=22050, channels=2)
    # a hand-written manifest: a relative path, 22.05 kHz stereo as a MultiCut
    line = {
        "id": "a",
        "start": 0.0,
        "duration": 0.5,
        "channel": [0, 1],
        "type": "MultiCut",
        "recording": {
            "id": "a",
            "sources": [{"type": "file", "channels": [0, 1], "source": "wavs/a.wav"}],
            "sampling_rate": 22050,
            "num_samples": 11025,
            "duration": 0.5,
            "channel_ids": [0, 1],
        },
        "supervisions": [
            {
                "id": "a",
                "recording_id": "a",
                "start": 0.0,
                "duration": 0.5,
                "channel": [0, 1],
                "text": "hello",
                "speaker": "s",
            }
        ],
    }
    with gzip.open(folder / "cuts.jsonl.gz", "wt") as f:
        f.write(json.dumps(line) + "\n")
    cuts = load_cuts(folder / "cuts.jsonl.gz")
    assert cuts.is_lazy
    (loaded,) = list(cuts)
    assert type(loaded) is MonoCut and loaded.sampling_rate == 16000
    assert loaded.recording.sources[0].source == str(folder.absolute() / "wavs" / "a.wav")
    assert loaded.load_audio().shape == (1, 8000) and loaded.supervisions[0].text == "hello"


def test_load_cuts_keeps_the_channel_a_monocut_names(tmp_path):
    path = write_audio(tmp_path / "st.wav", 0.5, sr=16000, channels=2)
    both, _ = sf.read(path, dtype="float32")
    cut = Recording.from_file(path).to_cut().to_mono()[1]  # MonoCut of channel 1
    CutSet.from_cuts([cut]).to_file(tmp_path / "cuts.jsonl")
    (loaded,) = list(load_cuts(tmp_path / "cuts.jsonl"))
    np.testing.assert_array_equal(loaded.load_audio()[0], both[:, 1])


def test_load_cuts_reads_an_imported_split_and_a_nemo_manifest(tmp_path):
    manifest, expected = make_nemo(tmp_path)
    import_jsonl(manifest, tmp_path / "out", show_progress=False)
    assert _ids(load_cuts(tmp_path / "out" / "train_cuts.jsonl.gz")) == expected.splits["train"]

    good = tmp_path / "good.jsonl"
    good.write_text(
        "".join(
            json.dumps(e) + "\n"
            for e in [
                {"audio_filepath": "corpus/audio/a.wav", "duration": 0.5, "text": "a"},
                {
                    "audio_filepath": "corpus/audio/b.flac",
                    "duration": 0.6,
                    "text": "",
                },  # kept: evaluation input
                {
                    "audio_filepath": "corpus/audio/long.wav",
                    "offset": 1.0,
                    "duration": 0.5,
                    "text": "l",
                },
            ]
        )
    )
    cuts = load_cuts(good)
    assert _ids(cuts) == ["a", "b", "long-001000"]
    assert all(c.load_audio().shape == (1, round(c.duration * 16000)) for c in cuts)


@pytest.mark.parametrize("name, content", [
    ("binary.jsonl", bytes(range(256)) * 4),  # not UTF-8
    ("broken.jsonl.gz", b"\x1f\x8b\x08 not deflate data"),  # a gzip header, then garbage
    ("short.jsonl.gz", b"\x1f\x8b"),  # a truncated gzip file
])
def test_binary_or_corrupt_jsonl_manifest_is_a_one_line_error(tmp_path, name, content):
    manifest = tmp_path / name
    manifest.write_bytes(content)
    with pytest.raises(DataError) as info:
        import_jsonl(manifest, tmp_path / "out", show_progress=False)
    assert str(info.value).startswith(f"{manifest}: cannot be read as a UTF-8 text manifest (")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "entry, problem",
    [
        (
            {"audio_filepath": "corpus/audio/e.wav", "duration": 0.5, "text": "x"},
            "audio file not found",
        ),
        (
            {"audio_filepath": "corpus/audio/g.wav", "duration": 0.5, "text": "x"},
            "not a readable audio file",
        ),
    ],
)
def test_load_cuts_names_a_bad_audio_file_and_its_line(tmp_path, entry, problem):
    make_nemo(tmp_path)
    manifest = tmp_path / "eval.jsonl"
    manifest.write_text(json.dumps(entry) + "\n")
    audio = tmp_path / entry["audio_filepath"]
    with pytest.raises(DataError, match=f"^{audio}: {problem}.*\\(listed at {manifest}:1\\)$"):
        load_cuts(manifest)


def test_load_cuts_stops_at_a_bad_segment(tmp_path):
    write_audio(tmp_path / "a.wav", 1.0)
    manifest = tmp_path / "m.jsonl"
    for entry, problem in [
        ({"offset": 0.1, "duration": 0}, "segment has zero duration"),
        ({"offset": 0.5, "duration": 1.0}, "segment 0.50-1.50 s lies past the end of"),
    ]:
        manifest.write_text(json.dumps({"audio_filepath": "a.wav", "text": "x", **entry}) + "\n")
        with pytest.raises(DataError, match=f"^{manifest}:1: {problem}"):
            load_cuts(manifest)


def test_load_cuts_rejects_what_it_cannot_read(tmp_path):
    cases = {
        tmp_path / "none.jsonl": "file not found",
        tmp_path / "empty.jsonl": "empty manifest",
        tmp_path / "other.jsonl": "neither a lhotse cuts manifest nor a NeMo JSONL manifest",
        tmp_path / "recordings.jsonl": "is a lhotse recordings manifest",
        tmp_path / "binary.jsonl.gz": "cannot be read as a text manifest",
        tmp_path: "is a directory, not a manifest",
    }
    (tmp_path / "empty.jsonl").write_text("\n\n")
    (tmp_path / "other.jsonl").write_text('{"wav": "a.wav", "words": "hi"}\n')
    (tmp_path / "recordings.jsonl").write_text(
        '{"id": "a", "sources": [], "sampling_rate": 16000}\n'
    )
    (tmp_path / "binary.jsonl.gz").write_bytes(b"\x1f\x8b\x08garbage")
    for path, problem in cases.items():
        with pytest.raises(DataError, match=f"^{path}: {problem}"):
            load_cuts(path)


def test_read_split_needs_a_complete_data_directory(tmp_path):
    with pytest.raises(DataError, match=f"^{tmp_path}: not a complete data directory"):
        read_split(tmp_path, "train")


def test_write_split_builds_cuts_when_none_given(tmp_path):
    make_nemo(tmp_path)
    source = CutSet.from_cuts(c for c in load_cuts(_one_line_manifest(tmp_path)))
    recordings = [c.recording for c in source]
    supervisions = [s for c in source for s in c.supervisions]
    write_split(tmp_path / "dir", "dev", recordings, supervisions)
    (written,) = list(CutSet.from_file(tmp_path / "dir" / "dev_cuts.jsonl.gz"))
    assert written.id == "a" and written.supervisions[0].text == "a" and written.duration == 0.5
    assert not list((tmp_path / "dir").glob(".*"))  # no temporary files left behind


def _one_line_manifest(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(
        json.dumps({"audio_filepath": "corpus/audio/a.wav", "duration": 0.5, "text": "a"}) + "\n"
    )
    return path


# ---------------------------------------------------------------------------------------------
# Messages: the summary counts every utterance looked at; a bad line is named as a bad line


def _summary_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]


@pytest.mark.parametrize("corpus", ["librispeech", "jsonl"])
def test_import_summary_counts_kept_and_skipped_utterances(tmp_path, caplog, corpus):
    caplog.set_level(logging.INFO, logger=LOGGER)
    out = tmp_path / "out"
    if corpus == "librispeech":
        src, expected = make_librispeech(tmp_path)
        meta = import_librispeech(src, out, show_progress=False)
        kept = len({i for ids in expected.parts.values() for i in ids})  # 9: every part's cuts
    else:
        src, expected = make_nemo(tmp_path)
        meta = import_jsonl(src, out, show_progress=False)
        kept = len(expected.splits["train"])  # 5
    skipped = sum(expected.skipped.values())
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(expected.skipped.items()))
    assert meta["skipped"] == expected.skipped
    assert _summary_lines(caplog) == [f"{out.absolute()}: skipped {skipped} of {kept + skipped}: {reasons}"]


def test_malformed_librispeech_transcript_line_is_named_as_such(tmp_path, caplog):
    src, expected = make_librispeech(tmp_path)
    folder = src / "train-clean-100" / "19" / "198"
    trans = folder / "19-198.trans.txt"
    trans.write_text(trans.read_text() + "garbage HELLO\n26-495-0000 WRONG CHAPTER\n")
    meta = import_librispeech(src, tmp_path / "out", show_progress=False)
    assert meta["skipped"] == {**expected.skipped, "bad_annotation": 2}
    shape = "expected '19-198-NNNN TRANSCRIPT'"
    malformed = [line for line in _bad_lines(caplog) if ": malformed line" in line]
    assert malformed == [f"{trans}:9: malformed line ({shape}, got 'garbage HELLO')",
                         f"{trans}:10: malformed line ({shape}, got '26-495-0000 WRONG CHAPTER')"]
    not_found = [line for line in _bad_lines(caplog) if line.endswith("not found")]
    assert not_found == [f"{folder}/19-198-0007.flac: audio file not found"]  # the fixture's own
