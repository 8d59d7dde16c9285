"""Batches: padding and lengths, stored vs computed features, train/eval augmentation, duration
batching, sorted first epoch, sampler resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.utils import fastcopy

from slimasr.data.augment import AugmentConfig
from slimasr.data.dataset import AsrDataset, SortedFirstEpochSampler, make_dataloader
from slimasr.data.features import FeatureConfig, GlobalCmvn, compute_fbank, num_frames, precompute_features
from slimasr.errors import ConfigError, DataError
from tests.data.fixtures import BAD_SAMPLES, write_bad_audio

SR = 16000
DURATIONS = [0.3 + 0.05 * ((7 * i) % 25) for i in range(25)]  # 25 cuts, 0.3 .. 1.5 s, unsorted
FEATS = FeatureConfig(dither=0.0)


class CharTokenizer:
    """a-z -> 1..26, space -> 27 (0 is the CTC blank)."""

    def encode(self, text: str) -> list[int]:
        return [27 if ch == " " else ord(ch) - ord("a") + 1 for ch in text]


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def _words(i: int) -> str:
    return " ".join(["Lamp", "ON", "kitchen", "off"][: 1 + i % 4])


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    cuts = []
    for i, dur in enumerate(DURATIONS):
        t = np.arange(int(round(dur * SR))) / SR
        audio = 0.2 * np.sin(2 * np.pi * (150 + 20 * i) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(root / f"u{i:02d}.wav", audio.astype(np.float32), SR)
        rec = Recording.from_file(root / f"u{i:02d}.wav", recording_id=f"u{i:02d}")
        sup = SupervisionSegment(rec.id, rec.id, 0.0, rec.duration, text=_words(i))
        cuts.append(MonoCut(rec.id, 0.0, rec.duration, 0, recording=rec, supervisions=[sup]))
    path = root / "cuts.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(path)
    return path


@pytest.fixture()
def cuts(manifest: Path) -> CutSet:
    return CutSet.from_jsonl_lazy(manifest)


def _dataset(train: bool = False, **kw) -> AsrDataset:
    kw.setdefault("cmvn", None)
    kw.setdefault("augment", None)
    return AsrDataset(CharTokenizer(), normalize, FEATS, train=train, **kw)


def _batch_of(cuts: CutSet, ids: list[str]) -> CutSet:
    return CutSet.from_cuts([c for c in cuts if c.id in ids])


def test_batch_padding_and_lengths(cuts: CutSet) -> None:
    batch_cuts = _batch_of(cuts, ["u00", "u01", "u02"])
    batch = _dataset()[batch_cuts]
    by_len = sorted(batch_cuts, key=lambda c: -c.duration)
    assert batch["cut_ids"] == [c.id for c in by_len]  # longest first
    lens = [num_frames(c.num_samples, FEATS) for c in by_len]
    assert batch["feature_lens"].tolist() == lens and batch["feature_lens"].dtype == torch.int64
    assert batch["features"].shape == (3, max(lens), 80) and batch["features"].dtype == torch.float32
    for i, (cut, n) in enumerate(zip(by_len, lens)):
        assert torch.allclose(batch["features"][i, :n], compute_fbank(cut.load_audio(), FEATS))
        assert (batch["features"][i, n:] == 0).all()
    texts = [normalize(c.supervisions[0].text) for c in by_len]
    assert batch["texts"] == texts
    expected = [CharTokenizer().encode(t) for t in texts]
    assert batch["target_lens"].tolist() == [len(e) for e in expected]
    assert batch["targets"].shape == (3, max(len(e) for e in expected))
    for row, e in zip(batch["targets"].tolist(), expected):
        assert row == e + [0] * (batch["targets"].shape[1] - len(e))


def test_on_the_fly_batch_drops_a_cut_with_bad_samples_and_names_it(cuts: CutSet, tmp_path: Path) -> None:
    """One cut with NaN samples used to make the whole batch's features (and loss) NaN."""
    path = write_bad_audio(tmp_path / "bad.wav", "nan", seconds=2.0)  # the longest in the batch
    rec = Recording.from_file(path, recording_id="bad")
    bad = MonoCut("bad", 0.0, rec.duration, 0, recording=rec,
                  supervisions=[SupervisionSegment("bad", "bad", 0.0, rec.duration, text="lamp")])
    good = _batch_of(cuts, ["u00", "u01"])
    batch = _dataset(train=True)[CutSet.from_cuts([*good, bad])]
    clean = _dataset(train=True)[good]
    assert batch["bad_audio"] == [f"{path}: {BAD_SAMPLES['nan']}"] and clean["bad_audio"] == []
    assert batch["cut_ids"] == clean["cut_ids"] and batch["texts"] == clean["texts"]
    for key in ("features", "feature_lens", "targets", "target_lens"):
        assert torch.equal(batch[key], clean[key]), key  # trimmed to the longest kept cut
    alone = _dataset()[CutSet.from_cuts([bad])]  # nothing left: an empty batch
    assert alone["cut_ids"] == [] and alone["features"].shape[0] == 0 and len(alone["bad_audio"]) == 1


def test_denoising_front_end_on_the_fly(cuts: CutSet) -> None:
    cfg = FeatureConfig(dither=0.0, denoise=True)
    (cut,) = _batch_of(cuts, ["u15"])
    batch = AsrDataset(CharTokenizer(), normalize, cfg, None, None, train=False)[CutSet.from_cuts([cut])]
    assert torch.allclose(batch["features"][0], compute_fbank(cut.load_audio(), cfg))
    assert not torch.allclose(batch["features"][0], compute_fbank(cut.load_audio(), FEATS))


def test_cmvn_is_applied_before_padding(cuts: CutSet) -> None:
    cmvn = GlobalCmvn(mean=torch.full((80,), -5.0), std=torch.full((80,), 2.0))
    batch_cuts = _batch_of(cuts, ["u03", "u04"])
    raw, normed = _dataset()[batch_cuts], _dataset(cmvn=cmvn)[batch_cuts]
    n = int(raw["feature_lens"].min())
    shortest = int(raw["feature_lens"].argmin())
    assert torch.allclose(normed["features"][shortest, :n], (raw["features"][shortest, :n] + 5) / 2)
    assert (normed["features"][shortest, n:] == 0).all()


def test_stored_features_used_and_match(cuts: CutSet, tmp_path: Path) -> None:
    stored = precompute_features(cuts, tmp_path / "feats", FEATS, show_progress=False)
    ids = ["u05", "u06", "u07"]
    from_disk = _dataset(on_the_fly=False)[_batch_of(stored, ids)]
    fresh = _dataset(on_the_fly=True)[_batch_of(stored, ids)]
    assert from_disk["feature_lens"].tolist() == fresh["feature_lens"].tolist()
    assert torch.allclose(from_disk["features"], fresh["features"], atol=2.0**-5)
    with pytest.raises(DataError, match="no stored features"):
        _dataset(on_the_fly=False)[_batch_of(cuts, ids)]


def test_spec_augment_in_train_mode_only(cuts: CutSet) -> None:
    torch.manual_seed(0)
    aug = AugmentConfig(spec_augment_prob=1.0)
    batch_cuts = _batch_of(cuts, ["u08", "u09", "u10"])
    plain = _dataset()[batch_cuts]["features"]
    evaluated = _dataset(train=False, augment=aug)[batch_cuts]["features"]
    trained = _dataset(train=True, augment=aug)[batch_cuts]
    assert torch.equal(evaluated, plain)
    assert not torch.equal(trained["features"], plain)
    for i, n in enumerate(trained["feature_lens"].tolist()):
        assert (trained["features"][i, n:] == 0).all()


def test_speed_perturb_in_training_changes_frames(cuts: CutSet, tmp_path: Path) -> None:
    stored = precompute_features(_batch_of(cuts, ["u11"]), tmp_path / "f", FEATS, show_progress=False)
    aug = AugmentConfig(spec_augment=False, speed_perturb=(0.9,))
    batch = _dataset(train=True, augment=aug)[stored]  # stored features dropped: audio is sped
    (cut,) = stored
    assert batch["cut_ids"] == [cut.id]
    assert batch["feature_lens"].item() == num_frames(round(cut.num_samples / 0.9), FEATS)
    with pytest.raises(ConfigError):
        _dataset(train=True, augment=aug, on_the_fly=False)


def test_noise_mixing_in_training_keeps_lengths(cuts: CutSet, tmp_path: Path) -> None:
    noise = 0.1 * np.random.default_rng(1).standard_normal(2 * SR)
    sf.write(tmp_path / "noise.wav", noise.astype(np.float32), SR)
    noise_cut = MonoCut("n", 0.0, 2.0, 0, recording=Recording.from_file(tmp_path / "noise.wav"))
    CutSet.from_cuts([noise_cut]).to_file(tmp_path / "noise.jsonl.gz")
    aug = AugmentConfig(
        spec_augment=False, noise_cuts=str(tmp_path / "noise.jsonl.gz"), noise_prob=1.0, noise_snr=(0, 0)
    )
    batch_cuts = _batch_of(cuts, ["u13", "u14"])
    clean = _dataset()[batch_cuts]
    noisy = _dataset(train=True, augment=aug)[batch_cuts]
    assert noisy["cut_ids"] == clean["cut_ids"]
    assert torch.equal(noisy["feature_lens"], clean["feature_lens"])
    assert (noisy["features"] - clean["features"]).abs().mean() > 0.5


def test_empty_text_gives_empty_target_and_blank_is_rejected(cuts: CutSet) -> None:
    (cut,) = _batch_of(cuts, ["u12"])
    empty = cut.map_supervisions(lambda s: fastcopy(s, text=""))
    batch = _dataset()[CutSet.from_cuts([empty])]
    assert batch["targets"].shape == (1, 0) and batch["target_lens"].tolist() == [0]

    class BlankTokenizer:
        def encode(self, text: str) -> list[int]:
            return [0]

    with pytest.raises(ValueError, match="blank"):
        AsrDataset(BlankTokenizer(), normalize, FEATS, None, None, train=False)[CutSet.from_cuts([cut])]


def _epoch(loader) -> list[dict]:
    return [{"ids": b["cut_ids"], "lens": b["feature_lens"].tolist()} for b in loader]


def test_batches_respect_max_duration_and_cover_every_cut_once(cuts: CutSet) -> None:
    loader, sampler = make_dataloader(cuts, _dataset(), max_duration=3.0, num_buckets=3)
    by_id = {c.id: c.duration for c in cuts}
    orders = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = _epoch(loader)
        ids = [i for b in batches for i in b["ids"]]
        assert sorted(ids) == sorted(by_id)  # each cut exactly once
        assert all(sum(by_id[i] for i in b["ids"]) <= 3.0 for b in batches)
        orders.append(ids)
    assert orders[0] != orders[1]  # reshuffled per epoch


def test_sorted_first_epoch_then_shuffled(cuts: CutSet) -> None:
    loader, sampler = make_dataloader(cuts, _dataset(), max_duration=3.0, sort_first_epoch=True)
    assert isinstance(sampler, SortedFirstEpochSampler)
    by_id = {c.id: c.duration for c in cuts}
    sampler.set_epoch(0)
    ids = [i for b in _epoch(loader) for i in sorted(b["ids"], key=by_id.get)]
    assert [by_id[i] for i in ids] == sorted(by_id.values())  # short to long across batches
    sampler.set_epoch(1)
    later = [i for b in _epoch(loader) for i in b["ids"]]
    assert sorted(later) == sorted(by_id) and later != ids


def test_loader_with_worker_process(cuts: CutSet) -> None:
    loader, sampler = make_dataloader(cuts, _dataset(), max_duration=3.0, num_workers=1)
    ids = [i for b in loader for i in b["cut_ids"]]
    assert sorted(ids) == sorted(c.id for c in cuts)


@pytest.mark.parametrize("sort_first_epoch,epoch", [(False, 0), (False, 1), (True, 0), (True, 1)])
def test_sampler_state_resumes_at_same_batch(manifest: Path, sort_first_epoch: bool, epoch: int) -> None:
    kw = dict(max_duration=3.0, num_buckets=3, seed=7, sort_first_epoch=sort_first_epoch)
    loader, sampler = make_dataloader(CutSet.from_jsonl_lazy(manifest), _dataset(), **kw)
    sampler.set_epoch(epoch)
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = sampler.state_dict()
    rest = [b["cut_ids"] for b in it]
    assert rest

    loader2, sampler2 = make_dataloader(CutSet.from_jsonl_lazy(manifest), _dataset(), **kw)
    sampler2.load_state_dict(state)
    assert [b["cut_ids"] for b in loader2] == rest


def test_split_with_fewer_cuts_than_buckets_still_batches(cuts: CutSet) -> None:
    few = cuts.subset(first=3).to_eager()
    loader, _ = make_dataloader(few, _dataset(), num_buckets=10, shuffle=False)
    assert sorted(i for b in _epoch(loader) for i in b["ids"]) == sorted(c.id for c in few)
