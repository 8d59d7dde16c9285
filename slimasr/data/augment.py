"""Training-time augmentation: SpecAugment on features, speed perturbation and noise mixing on
cuts (waveforms). All three are lhotse's (``SpecAugment``, ``PerturbSpeed``, ``CutMix``); this
module only maps one commented config onto them and works around two lhotse edge cases.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from lhotse import CutSet, RecordingSet, load_manifest
from lhotse.dataset import CutMix, PerturbSpeed, SpecAugment

from slimasr.errors import ConfigError, DataError


@dataclass
class AugmentConfig:
    """What augmentation the training batches get (evaluation batches get none)."""

    # SpecAugment (Park et al. 2019), applied per utterance to its unpadded frames.
    spec_augment: bool = True  # on by default for training
    num_freq_masks: int = 2  # frequency masks per utterance (paper's LibriSpeech policy: 2)
    freq_mask_width: int = 27  # max mel bins per frequency mask (paper's F=27 for 80 bins)
    num_time_masks: int = 10  # max time masks; lhotse lowers it so their total fits the fraction
    time_mask_width: int = 100  # max frames per time mask (paper's T=100)
    max_time_mask_fraction: float = 0.15  # at most this share of an utterance is time-masked
    # Time-warp window in frames (0 = off). The paper's 80 is for ~12 s LibriSpeech utterances;
    # 2-3 s commands (200-300 frames) get half of it.
    time_warp: int = 40
    spec_augment_prob: float = 0.9  # chance an utterance is spec-augmented at all (lhotse's p)
    # Speed perturbation on the waveform: factors picked uniformly, e.g. (0.9, 1.0, 1.1).
    # Empty = off. A factor > 1 shortens the audio: check CTC feasibility for fast speech.
    speed_perturb: tuple[float, ...] = ()
    speed_perturb_prob: float = 1.0  # chance a cut is perturbed (a 1.0 factor leaves it as is)
    # Additive noise: a lhotse manifest (CutSet or RecordingSet) of noise audio. None = off.
    noise_cuts: str | None = None
    noise_snr: tuple[float, float] = (10.0, 30.0)  # SNR range in dB, uniform (FINDINGS: 10-30 dB)
    noise_prob: float = 0.5  # chance a cut gets noise; the rest stay clean (FINDINGS: keep clean)

    def __post_init__(self) -> None:
        self.speed_perturb = tuple(float(f) for f in self.speed_perturb)  # lists from JSON/YAML
        self.noise_snr = tuple(float(s) for s in self.noise_snr)
        if len(self.noise_snr) != 2 or self.noise_snr[0] > self.noise_snr[1]:
            raise ConfigError("augment: noise_snr must be [low, high] in dB")
        if any(f <= 0 for f in self.speed_perturb):
            raise ConfigError("augment: speed_perturb factors must be > 0")
        for name in ("spec_augment_prob", "speed_perturb_prob", "noise_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augment: {name} must be in [0, 1]")
        if self.freq_mask_width < 1 or self.time_mask_width < 1:
            raise ConfigError("augment: freq_mask_width and time_mask_width must be >= 1")

    @property
    def on_waveform(self) -> bool:
        """True when some augmentation needs audio (so features must be computed on the fly)."""
        return bool(self.speed_perturb) or (self.noise_cuts is not None and self.noise_prob > 0)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        """Build from a plain dict; unknown keys are rejected."""
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"augment: unknown keys {unknown}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SpecAugmentFn = Callable[..., torch.Tensor]


def spec_augment(cfg: AugmentConfig) -> SpecAugmentFn:
    """A callable ``(feats (N, T, F), lens (N,) | None) -> (N, T, F)`` running lhotse's
    SpecAugment on each utterance's first ``lens[i]`` frames (padding is never warped or masked,
    and mask sizes scale with the real length). The input is not modified.

    Utterances too short for a single masked frame (``lens[i] * max_time_mask_fraction < 1``)
    are left alone: lhotse would crash drawing a zero-width mask.
    """
    # lhotse divides by the number of time masks: with 0 requested, ask for one mask of width
    # < 1 frame instead (lhotse draws widths in [0, size), so size 1 always masks nothing).
    no_time_masks = cfg.num_time_masks == 0
    augment = SpecAugment(
        time_warp_factor=cfg.time_warp if cfg.time_warp > 0 else None,
        num_feature_masks=cfg.num_freq_masks,
        features_mask_size=cfg.freq_mask_width,
        num_frame_masks=1 if no_time_masks else cfg.num_time_masks,
        frames_mask_size=1 if no_time_masks else cfg.time_mask_width,
        max_frames_mask_fraction=cfg.max_time_mask_fraction,
        p=cfg.spec_augment_prob,
    )

    def apply(feats: torch.Tensor, lens: torch.Tensor | None = None) -> torch.Tensor:
        if lens is None:
            lens = torch.full((feats.shape[0],), feats.shape[1], dtype=torch.int64)
        out = feats.clone()
        for i, n in enumerate(lens.tolist()):
            if n * cfg.max_time_mask_fraction >= 1:
                out[i, :n] = augment(feats[i : i + 1, :n])[0]
        return out

    return apply


def load_noise_cuts(path: str | Path) -> CutSet:
    """Read a noise manifest (a CutSet, or a RecordingSet turned into one cut per recording)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "noise manifest not found")
    try:
        manifest = load_manifest(path)
    except Exception as e:  # lhotse raises assorted errors for unreadable manifests
        raise DataError(path, f"cannot read noise manifest ({e})") from None
    if isinstance(manifest, RecordingSet):
        manifest = CutSet.from_manifests(recordings=manifest)
    if not isinstance(manifest, CutSet) or len(manifest) == 0:
        raise DataError(path, "noise manifest must be a non-empty CutSet or RecordingSet")
    return manifest


def cut_transforms(cfg: AugmentConfig, noise_cuts: CutSet | None = None) -> list[Callable]:
    """lhotse cut transforms (``CutSet -> CutSet``) for training batches, in order: speed
    perturbation, then noise mixing (so the noise itself is not sped up).

    ``noise_cuts`` overrides ``cfg.noise_cuts`` (a path). Cut IDs are preserved, and mixed
    noise never lengthens a cut.
    """
    transforms: list[Callable] = []
    if cfg.speed_perturb:
        factors = list(cfg.speed_perturb)
        transforms.append(PerturbSpeed(factors, p=cfg.speed_perturb_prob, preserve_id=True))
    if noise_cuts is None and cfg.noise_cuts is not None:
        noise_cuts = load_noise_cuts(cfg.noise_cuts)
    if noise_cuts is not None and cfg.noise_prob > 0:
        transforms.append(
            CutMix(
                noise_cuts,
                snr=cfg.noise_snr,
                p=cfg.noise_prob,
                pad_to_longest=False,  # True would pad every cut with noise to the batch max
                preserve_id=True,
                seed="randomized",  # per DataLoader worker (make_worker_init_fn), else global
                random_mix_offset=True,
            )
        )
    return transforms
