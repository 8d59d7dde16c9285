"""Batches for CTC training and evaluation: an lhotse-style map dataset (``CutSet -> batch``)
and a data loader that batches by total duration with lhotse's DynamicBucketingSampler.

Input cuts are assumed already filtered (``slimasr.data.validate.filter_cuts``): a cut with an
empty transcript yields an empty target (length 0) and is not skipped here. The one check made
here is on audio decoded for features computed on the fly: a cut whose samples are NaN/inf or
absurdly loud is dropped from its batch and named in ``batch["bad_audio"]`` (the training loop
counts it), since one such cut would turn the whole batch's loss into NaN.
"""

from __future__ import annotations

from itertools import islice

import copy
import warnings
from typing import Any, Callable, Iterator, Protocol

import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler
from lhotse.dataset.dataloading import make_worker_init_fn
from lhotse.dataset.input_strategies import OnTheFlyFeatures, PrecomputedFeatures
from lhotse.dataset.sampling.base import CutSampler
from torch.utils.data import DataLoader

from slimasr.data.augment import AugmentConfig, cut_transforms, spec_augment
from slimasr.data.features import FeatureConfig, GlobalCmvn, fbank_extractor, match_sampling_rate
from slimasr.data.validate import Problem, cut_audio_problem
from slimasr.errors import ConfigError, DataError

BLANK_ID = 0  # CTC blank; also the padding value of `targets`
PAD_FEATURE = 0.0  # value of padded frames (after CMVN: the global mean)


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


class AsrDataset(torch.utils.data.Dataset):
    """Turns a batch of cuts (from a sampler) into tensors.

    ``dataset[cuts]`` returns::

        features     (N, T, F) float32  CMVN-normalized log-mel, padded frames = 0
        feature_lens (N,)      int64    valid frames per utterance
        targets      (N, S)    int64    token ids, padded with 0 (blank never appears)
        target_lens  (N,)      int64
        texts        list[str]          normalized transcripts
        cut_ids      list[str]
        bad_audio    list[str]          ``path: problem`` of each cut dropped for bad samples

    Utterances are ordered longest first. Features come from the cuts' stored features when
    every cut in the batch has them, else are computed from audio (lhotse OnTheFlyFeatures);
    ``on_the_fly`` True forces computing, False requires stored features. In training mode the
    waveform augmentations (speed, noise) force computing, features computed on the fly get the
    feature config's dither, and SpecAugment runs after CMVN; otherwise features are exact
    (stored features never hold dither).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        normalize: Callable[[str], str],
        feature_cfg: FeatureConfig,
        cmvn: GlobalCmvn | None,
        augment: AugmentConfig | None,
        train: bool,
        on_the_fly: bool | None = None,
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.normalize = normalize
        self.feature_cfg = feature_cfg
        self.cmvn = cmvn
        self.train = train
        self.on_the_fly = on_the_fly
        augment = augment if train else None
        if augment is not None and augment.on_waveform and on_the_fly is False:
            raise ConfigError("speed perturbation / noise mixing need on_the_fly features")
        self.cut_transforms = cut_transforms(augment) if augment is not None else []
        self.spec_augment = spec_augment(augment) if augment and augment.spec_augment else None
        # Per-utterance extraction (no padded batch): the last frame then matches stored features.
        # Dither (feature_cfg.dither) is a training augmentation: evaluation features are exact.
        extractor = fbank_extractor(feature_cfg, dither=train)
        self._compute = OnTheFlyFeatures(extractor, use_batch_extract=False, return_audio=True)
        self._read = PrecomputedFeatures()

    def __getitem__(self, cuts: CutSet) -> dict[str, Any]:
        if self.cut_transforms:
            cuts = cuts.drop_features()  # waveform augmentation: stored features do not apply
            for transform in self.cut_transforms:
                cuts = transform(cuts)
        cuts = cuts.sort_by_duration(ascending=False)
        feats, feat_lens, bad = self._features(cuts)
        if bad:
            cuts, feats, feat_lens = _drop(cuts, feats, feat_lens, bad)
        if self.cmvn is not None:
            feats = self.cmvn(feats)
        feats = _pad_frames(feats, feat_lens)
        if self.spec_augment is not None:
            feats = self.spec_augment(feats, feat_lens)
        texts = [self.normalize(_transcript(cut)) for cut in cuts]
        targets, target_lens = self._targets(texts)
        return {
            "features": feats,
            "feature_lens": feat_lens,
            "targets": targets,
            "target_lens": target_lens,
            "texts": texts,
            "cut_ids": [cut.id for cut in cuts],
            "bad_audio": [problem.message for problem in bad.values()],
        }

    def _features(self, cuts: CutSet) -> tuple[torch.Tensor, torch.Tensor, dict[int, Problem]]:
        """``(N, T, F)`` float32 features (padding unspecified), ``(N,)`` int64 lengths, and the
        problem of each cut (by position) whose audio, decoded just now, is unusable."""
        stored = all(cut.has_features for cut in cuts)
        if self.on_the_fly is False and not stored:
            missing = next(cut.id for cut in cuts if not cut.has_features)
            raise DataError(None, f"cut {missing} has no stored features (on_the_fly=False)")
        bad = {}
        if stored and not self.on_the_fly:
            feats, lens = self._read(cuts)
            _check_dim(cuts, feats, self.feature_cfg)
        else:
            feats, lens, audios, audio_lens = self._compute(match_sampling_rate(cuts, self.feature_cfg))
            for i, cut in enumerate(cuts):
                if problem := cut_audio_problem(cut, audios[i, : audio_lens[i]].numpy()):
                    bad[i] = problem
        return feats.float(), lens.long(), bad

    def _targets(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, S)`` int64 padded with BLANK_ID and ``(N,)`` int64 lengths."""
        ids = [self.tokenizer.encode(text) for text in texts]
        if any(BLANK_ID in seq for seq in ids):
            raise ValueError(f"tokenizer produced the blank id {BLANK_ID} as a target")
        lens = torch.tensor([len(seq) for seq in ids], dtype=torch.int64)
        targets = torch.full((len(ids), int(lens.max()) if ids else 0), BLANK_ID, dtype=torch.int64)
        for i, seq in enumerate(ids):
            targets[i, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
        return targets, lens


def _drop(cuts: CutSet, feats: torch.Tensor, lens: torch.Tensor, bad: dict[int, Any]
          ) -> tuple[CutSet, torch.Tensor, torch.Tensor]:
    """The batch without the cuts at the positions in ``bad`` (frames trimmed to the longest)."""
    keep = [i for i in range(len(lens)) if i not in bad]
    lens = lens[keep]
    frames = int(lens.max()) if keep else 0
    kept = CutSet.from_cuts(cut for i, cut in enumerate(cuts) if i not in bad)
    return kept, feats[keep][:, :frames], lens


def _transcript(cut: Any) -> str:
    """The cut's text: its supervisions' texts in time order (one supervision by contract)."""
    sups = sorted(cut.supervisions, key=lambda s: s.start)
    return " ".join(s.text for s in sups if s.text)


def _pad_frames(feats: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Set frames at and beyond ``lens[i]`` of ``feats (N, T, F)`` to PAD_FEATURE."""
    valid = torch.arange(feats.shape[1])[None, :] < lens[:, None]  # (N, T)
    return feats.masked_fill(~valid[..., None], PAD_FEATURE)


def _check_dim(cuts: CutSet, feats: torch.Tensor, cfg: FeatureConfig) -> None:
    if feats.shape[-1] != cfg.num_mel_bins:
        first = next(iter(cuts))
        raise DataError(
            first.features.storage_path,
            f"stored features have {feats.shape[-1]} bins, the feature config {cfg.num_mel_bins}",
        )


class SortedFirstEpochSampler(torch.utils.data.Sampler):
    """Epoch 0 goes short to long; later epochs use ``sampler`` (shuffled buckets).

    FINDINGS: ordering the first epoch by duration gets CTC out of its all-blank stage faster.
    lhotse has no sampler for this: DynamicBucketingSampler with shuffle=False still emits
    buckets in random order, so epoch 0 is a SimpleCutSampler over the cuts sorted by duration.
    Sorting needs every cut's metadata in memory (about 2 KB per cut), once, for epoch 0 only:
    it is built on first use and dropped when the epoch changes.

    Like lhotse samplers: ``set_epoch``, ``state_dict``/``load_state_dict`` (mid-epoch resume).
    """

    def __init__(self, cuts: CutSet, sampler: CutSampler, max_duration: float, seed: int = 0):
        super().__init__()
        self.cuts = cuts
        self.sampler = sampler
        self.max_duration = max_duration
        self.seed = seed
        self.epoch = 0
        self._first: SimpleCutSampler | None = None

    @property
    def active(self) -> CutSampler:
        """The sampler serving the current epoch."""
        if self.epoch > 0:
            return self.sampler
        if self._first is None:
            ordered = CutSet.from_cuts(sorted(self.cuts, key=lambda c: c.duration))
            self._first = SimpleCutSampler(ordered, max_duration=self.max_duration, seed=self.seed)
        return self._first

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if epoch > 0:
            self._first = None
        self.active.set_epoch(epoch)

    def __iter__(self) -> Iterator[CutSet]:
        return iter(self.active)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "sampler": self.active.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_epoch(state["epoch"])
        self.active.load_state_dict(copy.deepcopy(state["sampler"]))  # lhotse consumes the dict


def make_dataloader(
    cuts: CutSet,
    dataset: AsrDataset,
    max_duration: float = 30.0,
    shuffle: bool = True,
    num_buckets: int = 10,
    seed: int = 0,
    num_workers: int = 0,
    sort_first_epoch: bool = False,
) -> tuple[DataLoader, DynamicBucketingSampler | SortedFirstEpochSampler]:
    """A DataLoader yielding ``dataset`` batches of at most ``max_duration`` seconds of audio.

    max_duration: 30 s is ~12 utterances of 2-3 s (FINDINGS: small batches, more updates).
    Duration is measured before augmentation (speed 0.9 can stretch a batch by 11%).
    Cuts are grouped into ``num_buckets`` duration buckets (lhotse DynamicBucketingSampler, which
    streams a lazy CutSet through a bounded buffer); ``shuffle`` reshuffles each epoch once the
    training loop calls ``sampler.set_epoch(epoch)``. ``sort_first_epoch``: see
    :class:`SortedFirstEpochSampler`.

    Resume: save ``sampler.state_dict()`` with the checkpoint, ``load_state_dict`` it into a new
    sampler. Exact with ``num_workers=0``; with workers the sampler runs ahead by the prefetched
    batches, which a resume then skips (as in lhotse/icefall).
    """
    # lhotse refuses more buckets than cuts: a tiny split (a smoke test, a small dev set) gets fewer.
    num_buckets = max(1, min(num_buckets, sum(1 for _ in islice(cuts, num_buckets))))
    with warnings.catch_warnings():  # eager CutSets work too, only without the memory saving
        warnings.filterwarnings("ignore", message=".*eagerly read CutSet.*")
        sampler: Any = DynamicBucketingSampler(
            cuts, max_duration=max_duration, shuffle=shuffle, num_buckets=num_buckets, seed=seed
        )
    if sort_first_epoch:
        sampler = SortedFirstEpochSampler(cuts, sampler, max_duration=max_duration, seed=seed)
    loader = DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,  # the sampler yields whole batches (CutSets)
        num_workers=num_workers,
        persistent_workers=num_workers > 0,  # keep worker RNGs running across epochs
        worker_init_fn=make_worker_init_fn(seed=seed) if num_workers > 0 else None,
    )
    return loader, sampler
