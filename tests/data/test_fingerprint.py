"""corpus_fingerprint: the same corpus anywhere gives the same hashes; one changed transcript or
sample changes its split's hash; fingerprint_mismatch warns on one line."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet
from lhotse.utils import fastcopy

from slimasr.data.fingerprint import corpus_fingerprint, fingerprint_mismatch, samples_sha256
from slimasr.errors import DataError
from tests.train.helpers import make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus") / "data", n_train=4, n_dev=2, dev_same=False)


def test_fingerprint_lists_every_split_with_its_count(corpus):
    fingerprint = corpus_fingerprint(corpus)
    assert sorted(fingerprint["splits"]) == ["dev", "train"]
    assert fingerprint["splits"]["train"]["utterances"] == 4
    assert fingerprint["splits"]["dev"]["utterances"] == 2
    assert len(fingerprint["splits"]["train"]["sha256"]) == 64


def test_same_corpus_built_twice_elsewhere_has_the_same_fingerprint(corpus, tmp_path):
    again = make_corpus(tmp_path / "elsewhere" / "copy", n_train=4, n_dev=2, dev_same=False)
    assert corpus_fingerprint(again) == corpus_fingerprint(corpus)


def test_moved_corpus_has_the_same_fingerprint(corpus, tmp_path):
    moved = shutil.copytree(corpus, tmp_path / "moved")
    assert corpus_fingerprint(moved) == corpus_fingerprint(corpus)


def test_one_changed_transcript_changes_only_its_split(corpus, tmp_path):
    copy = shutil.copytree(corpus, tmp_path / "copy")
    path = copy / "train_cuts.jsonl.gz"
    cuts = list(CutSet.from_file(path))
    cuts[1].supervisions[0].text += " x"
    CutSet.from_cuts(cuts).to_file(path)
    before, after = corpus_fingerprint(corpus)["splits"], corpus_fingerprint(copy)["splits"]
    assert after["train"]["sha256"] != before["train"]["sha256"]
    assert after["dev"] == before["dev"]


def test_rounding_noise_in_the_samples_leaves_the_fingerprint(corpus, tmp_path):
    """What two syntheses of one corpus differ by (1 int16 step in a few samples, a few samples
    of trimmed silence) is not a different corpus; a different voice is."""
    copy = shutil.copytree(corpus, tmp_path / "copy")
    wav = copy / "audio" / "dev-001.wav"
    samples, rate = sf.read(wav, dtype="int16")
    samples[100] += 1
    sf.write(wav, samples, rate, subtype="PCM_16")
    path = copy / "dev_cuts.jsonl.gz"
    cuts = list(CutSet.from_file(path))
    cuts[1] = fastcopy(cuts[1], duration=cuts[1].duration - 0.01)
    CutSet.from_cuts(cuts).to_file(path)
    assert corpus_fingerprint(copy) == corpus_fingerprint(corpus)
    cuts = list(CutSet.from_file(path))
    cuts[0].supervisions[0].custom = {**(cuts[0].supervisions[0].custom or {}), "voice": "other"}
    CutSet.from_cuts(cuts).to_file(path)
    before, after = corpus_fingerprint(corpus)["splits"], corpus_fingerprint(copy)["splits"]
    assert after["dev"]["sha256"] != before["dev"]["sha256"]
    assert after["train"] == before["train"]


def test_samples_sha256_hashes_int16_values():
    audio = np.array([0.0, 0.5, -1.0, 1.0], dtype=np.float32)  # 1.0 clips to 32767
    expected = hashlib.sha256(np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()).hexdigest()
    assert samples_sha256(audio) == expected


def test_mismatch_is_none_for_the_same_corpus(corpus, tmp_path):
    recorded = corpus_fingerprint(corpus)
    assert fingerprint_mismatch(shutil.copytree(corpus, tmp_path / "copy"), recorded) is None


def test_mismatch_warns_on_one_line_naming_the_splits(corpus, tmp_path):
    recorded = corpus_fingerprint(corpus)
    recorded["splits"]["dev"]["sha256"] = "0" * 64
    recorded["splits"]["test"] = {"utterances": 1, "sha256": "0" * 64}  # a split the corpus lacks
    warning = fingerprint_mismatch(corpus, recorded)
    assert warning.startswith(f"{corpus}: split(s) dev, test differ from the corpus")
    assert "\n" not in warning
    assert fingerprint_mismatch(corpus, recorded, splits=["train"]) is None


def test_folder_without_manifests_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no \\*_cuts.jsonl.gz manifests"):
        corpus_fingerprint(tmp_path)
