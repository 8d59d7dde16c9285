"""Synthesize the embedded smart-home speech corpus with several speech synthesizers.

Sentences come from :func:`slimasr.data.grammar.smart_home_grammar`; each is spoken by a voice
of one synthesizer family (:mod:`slimasr.data.synthesizers`: eSpeak NG, CMU Flite, Festival), at
a random rate and pitch, with random leading and trailing silence, and heard through random
acoustic conditions (:mod:`slimasr.data.effects`: a room, a far talker, a microphone's colouring,
a telephone line or a lossy codec), noise at a random SNR (or none), random gain and a little
dither, and written as 16-bit 16 kHz mono FLAC. Dev and test voices never occur in train, a
share of dev and test sentences never occurs in train either, and one whole family
(``unseen_synth``) is heard only in the ``test_unseen_synth`` split.

Every random choice for utterance ``index`` of ``split`` comes from a generator seeded with
``(seed, split, index)``, and every synthesizer gives the same audio for the same arguments, so
the same seed gives the same manifests and audio whatever the number of worker processes (with
the same package versions, which corpus.json records).

Output (the data-directory contract)::

    DIR/{split}_recordings.jsonl.gz, DIR/{split}_supervisions.jsonl.gz, DIR/{split}_cuts.jsonl.gz
    DIR/audio/{split}/{split}_{index:06d}.flac
    DIR/corpus.json      written last: seed, config, per-split counts, hours, voices, packages

Audio paths in the manifests are relative to DIR (``audio/train/...``; ``read_split`` and
``load_cuts`` resolve them against the manifest's folder), so the folder can be moved or copied;
``relative_paths=False`` writes absolute paths instead.
"""

from __future__ import annotations

import io
import json
import logging
import math
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from lhotse import (
    AudioSource,
    CutSet,
    MonoCut,
    Recording,
    RecordingSet,
    SupervisionSegment,
    SupervisionSet,
)
from rich.progress import Progress

from slimasr.data import effects
from slimasr.data.espeak import ENGLISH_BASES, EXCLUDED_VARIANTS, data_path, list_variants
from slimasr.data.general_text import WORDNET, check_source, load_general_sentences, source_record
from slimasr.data.grammar import Grammar, Utterance, smart_home_grammar
from slimasr.data.synthesizers import (
    FAMILIES,
    Prosody,
    get_synthesizer,
    package_versions,
    require,
    restart_synthesizers,
)
from slimasr.data.synthesizers.base import randomization_off
from slimasr.errors import ConfigError, DataError
from slimasr.io import LOCK_NAME, atomic_dir, write_json_atomic
from slimasr.progress import progress_bar

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")  # every corpus has these
UNSEEN_SYNTH_SPLIT = "test_unseen_synth"  # and this one when SynthConfig.unseen_synth is set
UNLABELLED_SPLIT = "unlabelled"  # the only split of an unlabelled corpus (SynthConfig.unlabelled)
GENERAL_INTENT = "general"  # the intent of a general English sentence (SynthConfig.general_share)
SAMPLE_RATE = 16000  # Hz, the corpus audio
NOISE_COLORS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f ** exponent
# The default synthesizers, named explicitly so that the default corpus is the same on every
# machine: a missing one is refused with its install command, never silently skipped.
DEFAULT_SYNTHESIZERS = ("espeak", "flite", "festival")
ROOMS = ("none", "near", "far")  # plan.room: no reverberation, effects.reverb, effects.far_field
CHANNELS = ("none", "telephone", "vorbis", "opus", "mp3")  # plan.channel

_SPLIT_CODE = {"train": 0, "dev": 1, "test": 2, UNSEEN_SYNTH_SPLIT: 3, UNLABELLED_SPLIT: 4}
_TEST_VOICE_FROM = 3  # a non-eSpeak family holds out a test voice from this many voices
_DEV_VOICE_FROM = 5  # ... and a dev voice too from this many
_FAMILY_CODE = {"espeak": 0, "flite": 1, "festival": 2, "piper": 3}  # seeds each family's voice split
# Random streams, the second word of every seed: (seed, stream, split, index).
_UTTERANCE_STREAM, _SENTENCE_STREAM, _VOICE_STREAM = 0, 1, 2
# Per-utterance effect streams: (plan.seed, stream), so one effect's draws never shift another's.
_ROOM_STREAM, _MICROPHONE_STREAM, _CHANNEL_STREAM = 1, 2, 3
_FIRST_GUESS_SECONDS = 3.0  # mean train utterance length assumed before any is measured
_ROUND_MARGIN = 1.02  # synthesize 2 % more than the estimate, to need one round most times
_TASK_SIZE = 8  # utterances per task sent to a worker process
_NOISE_LOW_HZ = 20.0  # coloured noise is flat below this frequency (no sub-audio drift)
_INT16_SCALE = 32768.0  # full scale of 16-bit audio
_GRAMMAR_COUNT_LIMIT = 100_000  # corpus.json reports the grammar's sentences up to this count
# Plan fields stored in each cut's ``custom``, to break results down by voice or condition.
_CUT_CUSTOM = ("synthesizer", "voice", "speaker", "accent", "rate", "pitch", "pitch_range", "warp",
               "room", "microphone", "channel", "noise", "snr_db", "peak_dbfs")  # fmt: skip


@dataclass
class SynthConfig:
    """How much audio, which voices and how it is degraded. Every value is a default for the CLI.

    The shares of the acoustic effects are measured (docs/corpus.md): room, far talker and
    telephone buy robustness to those conditions for a few WER points on clean speech.
    """

    hours: float = 1.5  # hours of training audio (FINDINGS: 1.5 h trains a good model in minutes)
    seed: int = 0  # same seed -> identical manifests and audio, whatever num_workers
    num_workers: int = 2  # synthesis processes (eSpeak is not thread-safe); 1 = this process
    dev_utterances: int = 250  # dev size when hours == reference_hours; scales with hours
    test_utterances: int = 400  # test (and test_unseen_synth) size at reference_hours; scales
    min_eval_utterances: int = 100  # dev and test never shrink below this many utterances
    reference_hours: float = 1.5  # training hours at which dev/test have the sizes above
    # Voices. eSpeak variants are held out by count; every other family of n voices holds out
    # one test voice when n >= 3 and one dev voice too when n >= 5 (the rest are for train).
    synthesizers: list[str] = field(default_factory=lambda: list(DEFAULT_SYNTHESIZERS))
    unseen_synth: str | None = "flite"  # family heard only in test_unseen_synth (None: no split)
    espeak_share: float = 0.6  # share of a split's utterances spoken by eSpeak when it has
    # eSpeak voices and others; the other families' voices share the rest evenly
    dev_variants: int = 10  # eSpeak voice variants heard only in dev
    test_variants: int = 20  # eSpeak voice variants heard only in test; all others are for train
    unseen_share: float = 0.5  # share of dev and of test sentences that never occur in train
    unseen_min_intent_sentences: int = 1000  # unseen sentences come from intents this varied
    rate_min: int = 130  # speaking rate, words per minute, uniform in [min, max] (175 = normal)
    rate_max: int = 200  # FINDINGS: above ~190 wpm, x4-subsampled character CTC struggles
    pitch_min: int = 20  # eSpeak base pitch (0-100), uniform in [min, max]; the other families
    pitch_max: int = 80  # keep their voices' own pitch, moved by the warp below
    pitch_range_min: int = 20  # eSpeak intonation range (0 = monotone, 100 = lively)
    pitch_range_max: int = 80  # upper end of the intonation range
    warp_min: float = 0.92  # non-eSpeak voices are resampled by a factor uniform in [min, max]:
    warp_max: float = 1.08  # pitch, formants and speed move together (a larger or smaller talker)
    # Acoustic conditions (slimasr/data/effects.py): the share of utterances each reaches.
    reverb_share: float = 0.25  # a near talker in a room (T60 0.15-0.6 s)
    far_field_share: float = 0.1  # a talker across the room (T60 0.4-1 s, strong reverb, quiet)
    far_peak_min_dbfs: float = -35.0  # far-field level: the peak lands uniformly in [min, max]
    far_peak_max_dbfs: float = -20.0  # upper end of the far-field peak level
    microphone_share: float = 0.5  # a microphone's colouring (random EQ)
    telephone_share: float = 0.05  # a phone line: 8 kHz, 300-3400 Hz, mu-law or GSM
    codec_share: float = 0.1  # a lossy codec round trip, one of codecs (exclusive of telephone)
    codecs: tuple[str, ...] = ("vorbis", "opus", "mp3")  # lossy codecs (written by libsndfile)
    clean_share: float = 0.25  # share of utterances with no added noise (dither only)
    snr_min_db: float = 10.0  # SNR of the added noise, dB, uniform (FINDINGS: 10-30 dB is fine)
    snr_max_db: float = 30.0  # upper end of the noise SNR
    noise_colors: tuple[str, ...] = ("white", "pink", "brown")  # spectra of the added noise
    peak_min_dbfs: float = -20.0  # random gain: the peak lands uniformly in [min, max] dBFS
    peak_max_dbfs: float = -1.0  # below 0 dBFS, so nothing ever clips
    silence_min_s: float = 0.05  # leading and trailing silence, each uniform in [min, max] s
    silence_max_s: float = 0.5  # upper end of the leading/trailing silence
    dither_lsb: float = 2.0  # Gaussian dither, std in 16-bit steps: never digital silence
    trim_level: float = 3e-4  # the synthesizer's own silence (|x| below this, full scale 1) is cut
    variants: list[str] = field(default_factory=list_variants)  # eSpeak variants to draw from
    relative_paths: bool = True  # audio paths relative to the corpus folder: it can be moved
    # Only an "unlabelled" split of `hours` for distillation: train voices (use the labelled
    # corpus's seed, so dev/test voices stay out), sentences from its own random stream (none of
    # the dev/test unseen ones), and manifests without text (cuts with no supervisions).
    unlabelled: bool = False
    # Text beyond the grammar (slimasr/data/general_text.py): this share of the train (and
    # unlabelled) utterances say a general English sentence of general_text ("wordnet": WordNet's
    # usage examples, package wordnet-base; or a text file, one sentence per line) instead of a
    # smart-home command. Dev and test stay smart-home. 0 = the grammar alone (the default corpus).
    general_share: float = 0.0
    general_text: str = WORDNET

    def __post_init__(self) -> None:
        self.codecs = tuple(self.codecs)
        self.noise_colors = tuple(self.noise_colors)
        failed = [problem for problem, ok in self._checks().items() if not ok]
        if failed:
            raise ConfigError(f"SynthConfig: {'; '.join(failed)}")

    def _checks(self) -> dict[str, bool]:
        espeak_held_out = "espeak" in self.synthesizers and self.unseen_synth != "espeak"
        shares = ("unseen_share", "clean_share", "espeak_share", "reverb_share",
                  "far_field_share", "microphone_share", "telephone_share", "codec_share",
                  "general_share")
        return {
            "general_share must be < 1 (dev and test repeat train's smart-home sentences)":
                self.general_share < 1,
            "hours must be > 0": self.hours > 0,
            "num_workers must be >= 1": self.num_workers >= 1,
            "min_eval_utterances must be >= 2": self.min_eval_utterances >= 2,
            **{f"{name} must be in [0, 1]": 0 <= getattr(self, name) <= 1 for name in shares},
            "reverb_share + far_field_share must be <= 1":
                self.reverb_share + self.far_field_share <= 1,
            "telephone_share + codec_share must be <= 1":
                self.telephone_share + self.codec_share <= 1,
            f"synthesizers must be distinct names among {sorted(FAMILIES)}":
                bool(self.synthesizers) and set(self.synthesizers) <= set(FAMILIES)
                and len(set(self.synthesizers)) == len(self.synthesizers),
            "unseen_synth must be one of synthesizers, and not the only one":
                self.unseen_synth is None or (self.unseen_synth in self.synthesizers
                                              and len(self.synthesizers) > 1),
            f"codecs must be among those this libsndfile writes: {effects.available_codecs()}":
                set(self.codecs) <= set(effects.available_codecs())
                and (bool(self.codecs) or self.codec_share == 0),
            "rate_min must be <= rate_max": 0 < self.rate_min <= self.rate_max,
            "pitch_min must be <= pitch_max": self.pitch_min <= self.pitch_max,
            "pitch_range_min must be <= pitch_range_max":
                self.pitch_range_min <= self.pitch_range_max,
            "0 < warp_min <= warp_max": 0 < self.warp_min <= self.warp_max,
            "snr_min_db must be <= snr_max_db": self.snr_min_db <= self.snr_max_db,
            "peak_min_dbfs <= peak_max_dbfs <= 0": self.peak_min_dbfs <= self.peak_max_dbfs <= 0,
            "far_peak_min_dbfs <= far_peak_max_dbfs <= 0":
                self.far_peak_min_dbfs <= self.far_peak_max_dbfs <= 0,
            "silence_min_s must be <= silence_max_s": 0 <= self.silence_min_s <= self.silence_max_s,
            f"noise_colors must be among {sorted(NOISE_COLORS)}":
                bool(self.noise_colors) and set(self.noise_colors) <= set(NOISE_COLORS),
            f"variants must be files of {data_path() / 'voices' / '!v'}":
                set(self.variants) <= set(list_variants()) | set(EXCLUDED_VARIANTS),
            "dev_variants and test_variants must be >= 1 and leave >= 1 variant for train":
                not espeak_held_out or (1 <= self.dev_variants and 1 <= self.test_variants
                and self.dev_variants + self.test_variants < len(set(self.variants))),
        }  # fmt: skip

    def splits(self) -> tuple[str, ...]:
        """The corpus's splits: train, dev, test, and test_unseen_synth when unseen_synth is set."""
        return SPLITS + ((UNSEEN_SYNTH_SPLIT,) if self.unseen_synth else ())

    def eval_size(self, split: str) -> int:
        """Number of dev or test utterances for this many training hours."""
        base = self.dev_utterances if split == "dev" else self.test_utterances
        return max(self.min_eval_utterances, round(base * self.hours / self.reference_hours))


@dataclass(frozen=True)
class UtterancePlan:
    """Everything needed to render one utterance; a pure function of (seed, split, index)."""

    split: str
    index: int
    text: str
    intent: str
    slots: dict[str, str]
    synthesizer: str  # the family, e.g. "espeak" or "flite"
    speaker: str  # the unit splits hold out: an eSpeak variant ("m3") or another family's voice
    accent: str | None  # eSpeak base voice, e.g. "en-us"; None for the other families
    rate: int  # words per minute
    pitch: int  # 0-100
    pitch_range: int  # 0-100
    warp: float  # resampling factor of the synthesized speech (1.0 = none)
    room: str  # one of ROOMS
    microphone: bool  # random EQ applied
    channel: str  # one of CHANNELS
    noise: str  # a colour of NOISE_COLORS, or "none"
    snr_db: float | None  # None when noise == "none"
    peak_dbfs: float  # peak level after gain
    lead_s: float  # leading silence, seconds
    trail_s: float  # trailing silence, seconds
    seed: int  # for the noise samples, the effects and eSpeak's own random generator

    @property
    def id(self) -> str:
        return f"{self.split}_{self.index:06d}"

    @property
    def voice(self) -> str:
        """The voice as its family names it: ``"en-us+m3"`` for eSpeak, ``"slt"`` for Flite."""
        return f"{self.accent}+{self.speaker}" if self.synthesizer == "espeak" else self.speaker

    @property
    def audio_path(self) -> str:
        """Path of the FLAC file relative to the corpus folder."""
        return f"audio/{self.split}/{self.id}.flac"


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def synthesize_corpus(
    out_dir: str | Path, config: SynthConfig, overwrite: bool = False, show_progress: bool = True
) -> dict:
    """Synthesize every split of ``config.splits()`` into ``out_dir``; return the corpus.json summary.

    The corpus is built in a temporary folder beside ``out_dir`` and moved into place only when
    complete, so an interrupted run leaves nothing behind and never damages an existing corpus.
    Raises ConfigError (with the install command) if a synthesizer of ``config`` is missing, and
    DataError naming ``out_dir`` if it already holds a corpus (unless ``overwrite``) or is a
    non-empty folder that is not a corpus.
    """
    out_dir = Path(out_dir)
    require(config.synthesizers)
    if config.general_share > 0:
        check_source(config.general_text)
    _check_destination(out_dir, overwrite)
    fixed = _warn_if_addresses_move(config)
    audio_root = None if config.relative_paths else out_dir.resolve()  # None: relative paths
    grammar = smart_home_grammar()
    voices = split_voices(config)
    unseen = _unseen_sentences(grammar, config)
    general = load_general_sentences(config.general_text) if config.general_share > 0 else []
    with ExitStack() as stack:
        tmp = stack.enter_context(atomic_dir(out_dir))
        pool = stack.enter_context(_executor(config.num_workers))
        progress = stack.enter_context(progress_bar() if show_progress else Progress(disable=True))
        render = _Renderer(tmp, config, pool, progress)
        reserved = {u.text for split_unseen in unseen.values() for u in split_unseen}
        if config.unlabelled:
            return _synthesize_unlabelled(tmp, audio_root, grammar, config, voices, reserved, render,
                                          fixed, general)
        plans = {"train": _synthesize_train(grammar, config, voices["train"], reserved, render,
                                            general=general)}
        for split in config.splits()[1:]:
            plans[split] = _plan_eval(config, split, voices[split], unseen[split], plans["train"])
            render.run(split, plans[split])
        summary = _summary(grammar, config, plans, voices, render.num_samples, fixed)
        if general:
            summary["general_text"] = _general_summary(config, general)
        for split in config.splits():
            _write_manifests(tmp, audio_root, split, plans[split], render.num_samples)
        write_json_atomic(tmp / "corpus.json", summary)  # last: its presence means complete
    return summary


def _warn_if_addresses_move(config: SynthConfig) -> bool:
    """Whether the synthesizer programs run without address-space randomization
    (``fixed_addresses``; Festival's diphone voices need it to repeat themselves); says so in one
    line where the system refuses it and Festival is used."""
    fixed = randomization_off()
    if "festival" in config.synthesizers and not fixed:
        log.warning("warning: this system does not let Festival run without address-space "
                    "randomization: a few of its diphone utterances may differ from run to run "
                    "(docs/corpus.md)")
    return fixed


def split_voices(config: SynthConfig) -> dict[str, dict[str, list[str]]]:
    """``{split: {family: speakers}}``: every speaker of every family in exactly one split.

    Speakers are eSpeak variants and the other families' voices, shuffled by the seed. The
    unseen family goes whole to test_unseen_synth; eSpeak gives dev_variants to dev and
    test_variants to test; another family of n voices gives one to test when n >= 3 and one to
    dev when n >= 5. ConfigError if dev or test would have no voice at all.
    """
    out: dict[str, dict[str, list[str]]] = {split: {} for split in config.splits()}
    for family in sorted(config.synthesizers):
        names = sorted(set(config.variants) if family == "espeak" else FAMILIES[family].VOICES)
        if family == config.unseen_synth:
            out[UNSEEN_SYNTH_SPLIT][family] = names
            continue
        rng = np.random.default_rng([config.seed, _VOICE_STREAM, _FAMILY_CODE[family], 0])
        order = [names[i] for i in rng.permutation(len(names))]
        n_dev, n_test = _held_out_counts(config, family, len(names))
        held = {"test": order[:n_test], "dev": order[n_test : n_test + n_dev],
                "train": order[n_test + n_dev :]}  # fmt: skip
        for split, speakers in held.items():
            if speakers:
                out[split][family] = sorted(speakers)
    empty = [split for split in config.splits() if not out[split]]
    if empty:
        raise ConfigError(f"SynthConfig: no voice left for {', '.join(empty)} with synthesizers "
                          f"{config.synthesizers} and unseen_synth {config.unseen_synth}")  # fmt: skip
    return out


def _held_out_counts(config: SynthConfig, family: str, n: int) -> tuple[int, int]:
    """(dev, test) speakers a family of ``n`` speakers holds out of train."""
    if family == "espeak":
        return config.dev_variants, config.test_variants
    return int(n >= _DEV_VOICE_FROM), int(n >= _TEST_VOICE_FROM)


# ---------------------------------------------------------------------------------------------
# Planning: which sentence, voice and degradation each utterance gets
# ---------------------------------------------------------------------------------------------
def _unseen_sentences(grammar: Grammar, config: SynthConfig) -> dict[str, list[Utterance]]:
    """Distinct evaluation sentences kept out of train, from intents with many phrasings.

    (A short command such as "snooze" is common; holding it out would remove it from training
    altogether, so unseen sentences come only from intents with at least
    ``config.unseen_min_intent_sentences`` distinct sentences.)
    """
    limit = config.unseen_min_intent_sentences
    varied = [n for n in sorted(grammar.intents) if grammar.count_sentences(limit, n) >= limit]
    if not varied and config.unseen_share > 0:
        raise ConfigError(f"SynthConfig: no intent has unseen_min_intent_sentences={limit}")
    taken: set[str] = set()
    out: dict[str, list[Utterance]] = {}
    for split in config.splits()[1:]:
        rng = _rng(config.seed, _SENTENCE_STREAM, split, 0)
        wanted = round(config.unseen_share * config.eval_size(split))
        out[split] = []
        while len(out[split]) < wanted:
            utterance = grammar.sample(rng, intent=varied[int(rng.integers(len(varied)))])
            if utterance.text not in taken:
                taken.add(utterance.text)
                out[split].append(utterance)
    return out


def _plan_train(
    grammar: Grammar,
    config: SynthConfig,
    voices: dict[str, list[str]],
    reserved: set[str],
    index: int,
    split: str = "train",
    general: Sequence[str] = (),
) -> UtterancePlan:
    """Train (or unlabelled) utterance ``index``: any grammar sentence except the reserved
    (unseen) ones, or with ``config.general_share`` (when ``general`` holds sentences) one of
    ``general``."""
    rng = _rng(config.seed, _UTTERANCE_STREAM, split, index)
    if general and config.general_share > 0 and rng.random() < config.general_share:
        # (no draw at share 0: corpora made before general_share are reproduced exactly)
        utterance = Utterance(general[int(rng.integers(len(general)))], GENERAL_INTENT)
        if utterance.text not in reserved:
            return _plan_voice(config, split, index, utterance, voices, rng)
    utterance = grammar.sample(rng)
    while utterance.text in reserved:
        utterance = grammar.sample(rng)
    return _plan_voice(config, split, index, utterance, voices, rng)


def _plan_eval(
    config: SynthConfig,
    split: str,
    voices: dict[str, list[str]],
    unseen: list[Utterance],
    train: list[UtterancePlan],
) -> list[UtterancePlan]:
    """An evaluation split: the unseen sentences plus sentences drawn from train, shuffled."""
    rng = _rng(config.seed, _SENTENCE_STREAM, split, 1)
    n_seen = config.eval_size(split) - len(unseen)
    train = [p for p in train if p.intent != GENERAL_INTENT]  # evaluation stays smart-home
    if not train:
        raise ConfigError(f"SynthConfig: no smart-home sentence in train for {split}'s seen "
                          f"sentences: lower general_share or raise hours")  # fmt: skip
    picks = rng.choice(len(train), size=n_seen, replace=n_seen > len(train))
    seen = [Utterance(train[i].text, train[i].intent, train[i].slots) for i in picks]
    utterances = unseen + seen
    order = rng.permutation(len(utterances))
    return [
        _plan_voice(config, split, i, utterances[k], voices,
                    _rng(config.seed, _UTTERANCE_STREAM, split, i))
        for i, k in enumerate(order)
    ]  # fmt: skip


def _plan_voice(
    config: SynthConfig,
    split: str,
    index: int,
    utterance: Utterance,
    voices: dict[str, list[str]],
    rng: np.random.Generator,
) -> UtterancePlan:
    """Draw voice, prosody and conditions for one utterance from its own generator."""
    family, speaker = _pick_speaker(config, voices, rng)
    accent = ENGLISH_BASES[int(rng.integers(len(ENGLISH_BASES)))] if family == "espeak" else None
    warp = 1.0
    if family != "espeak":  # eSpeak varies pitch itself; the others are resampled instead
        warp = round(float(rng.uniform(config.warp_min, config.warp_max)), 4)
    room, channel = _pick_conditions(config, rng)
    clean = rng.random() < config.clean_share
    noise = "none" if clean else str(rng.choice(config.noise_colors))
    snr_db = None if clean else round(float(rng.uniform(config.snr_min_db, config.snr_max_db)), 2)
    peak = ((config.far_peak_min_dbfs, config.far_peak_max_dbfs) if room == "far"
            else (config.peak_min_dbfs, config.peak_max_dbfs))  # fmt: skip
    return UtterancePlan(
        split=split,
        index=index,
        text=utterance.text,
        intent=utterance.intent,
        slots=dict(utterance.slots),
        synthesizer=family,
        speaker=speaker,
        accent=accent,
        rate=int(rng.integers(config.rate_min, config.rate_max + 1)),
        pitch=int(rng.integers(config.pitch_min, config.pitch_max + 1)),
        pitch_range=int(rng.integers(config.pitch_range_min, config.pitch_range_max + 1)),
        warp=warp,
        room=room,
        microphone=bool(rng.random() < config.microphone_share),
        channel=channel,
        noise=noise,
        snr_db=snr_db,
        peak_dbfs=round(float(rng.uniform(*peak)), 2),
        lead_s=round(float(rng.uniform(config.silence_min_s, config.silence_max_s)), 3),
        trail_s=round(float(rng.uniform(config.silence_min_s, config.silence_max_s)), 3),
        seed=int(rng.integers(2**31 - 1)),
    )


def _pick_speaker(
    config: SynthConfig, voices: dict[str, list[str]], rng: np.random.Generator
) -> tuple[str, str]:
    """(family, speaker): eSpeak's speakers share espeak_share of the draws (all of them when
    it is alone), the other families' speakers share the rest evenly."""
    pairs = [(family, s) for family in sorted(voices) for s in voices[family]]
    n_espeak = sum(family == "espeak" for family, _ in pairs)
    n_other = len(pairs) - n_espeak
    if n_espeak and n_other:
        weights = [config.espeak_share / n_espeak if f == "espeak"
                   else (1 - config.espeak_share) / n_other for f, _ in pairs]  # fmt: skip
    else:
        weights = [1.0 / len(pairs)] * len(pairs)
    return pairs[int(rng.choice(len(pairs), p=np.asarray(weights) / sum(weights)))]


def _pick_conditions(config: SynthConfig, rng: np.random.Generator) -> tuple[str, str]:
    """(room, channel): a far talker, a near one or none; a phone line, a codec or neither."""
    draw = rng.random()
    room = ("far" if draw < config.far_field_share
            else "near" if draw < config.far_field_share + config.reverb_share else "none")
    draw = rng.random()
    channel = "none"
    if draw < config.telephone_share:
        channel = "telephone"
    elif draw < config.telephone_share + config.codec_share:
        channel = config.codecs[int(rng.integers(len(config.codecs)))]
    return room, channel


def _rng(seed: int, stream: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, _SPLIT_CODE[split], index])


# ---------------------------------------------------------------------------------------------
# Synthesis: the train split grows until it holds config.hours of audio
# ---------------------------------------------------------------------------------------------
def _synthesize_train(
    grammar: Grammar,
    config: SynthConfig,
    voices: dict[str, list[str]],
    reserved: set[str],
    render: "_Renderer",
    split: str = "train",
    general: Sequence[str] = (),
) -> list[UtterancePlan]:
    """Render train utterances 0, 1, 2, ... and keep the shortest prefix with config.hours.

    Rounds are sized from the mean length measured so far; the cut-off depends only on the
    durations in index order, so it is the same for any number of workers.
    """
    target = round(config.hours * 3600 * SAMPLE_RATE)  # in samples
    plans: list[UtterancePlan] = []
    total = 0
    while total < target:
        mean = total / len(plans) if plans else _FIRST_GUESS_SECONDS * SAMPLE_RATE
        n_new = max(math.ceil((target - total) / mean * _ROUND_MARGIN), _TASK_SIZE)
        new = [
            _plan_train(grammar, config, voices, reserved, len(plans) + i, split, general)
            for i in range(n_new)
        ]
        render.run(split, new, expected_total=len(plans) + n_new)
        plans += new
        total += sum(render.num_samples[p.id] for p in new)
    lengths = np.cumsum([render.num_samples[p.id] for p in plans])
    keep = int(np.searchsorted(lengths, target)) + 1  # first prefix reaching the target
    render.discard(plans[keep:])
    render.finish(split, keep)
    return plans[:keep]


class _Renderer:
    """Renders plans to FLAC in ``root`` (in-process or in a pool) and tracks progress."""

    def __init__(self, root: Path, config: SynthConfig, pool: Executor | None, progress: Progress):
        self.root, self.config, self.pool, self.progress = root, config, pool, progress
        self.num_samples: dict[str, int] = {}  # utterance id -> samples written
        self._tasks: dict[str, int] = {}

    def run(
        self, split: str, plans: list[UtterancePlan], expected_total: int | None = None
    ) -> None:
        task = self._task(split, expected_total or len(plans))
        batches = [plans[i : i + _TASK_SIZE] for i in range(0, len(plans), _TASK_SIZE)]
        root = str(self.root)
        if self.pool is None:
            for batch in batches:
                self._done(batch, render_batch(batch, root, self.config), task)
            return
        futures = {self.pool.submit(render_batch, b, root, self.config): b for b in batches}
        try:
            for future in as_completed(futures):
                self._done(futures[future], future.result(), task)
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def discard(self, plans: list[UtterancePlan]) -> None:
        """Delete the audio of plans that were rendered but are not kept."""
        for plan in plans:
            (self.root / plan.audio_path).unlink()
            del self.num_samples[plan.id]

    def finish(self, split: str, count: int) -> None:
        self.progress.update(self._tasks[split], total=count, completed=count)

    def _task(self, split: str, total: int) -> int:
        if split not in self._tasks:
            self._tasks[split] = self.progress.add_task(f"synthesizing {split}", total=total)
        self.progress.update(self._tasks[split], total=total)
        return self._tasks[split]

    def _done(self, batch: list[UtterancePlan], lengths: list[int], task: int) -> None:
        self.num_samples.update({p.id: n for p, n in zip(batch, lengths)})
        self.progress.advance(task, len(batch))


def _executor(num_workers: int) -> AbstractContextManager[Executor | None]:
    """A process pool (spawned: safe even if the caller runs threads) of single-threaded
    workers, or None for 1 worker."""
    if num_workers <= 1:
        return nullcontext(None)  # render in this process
    return _single_threaded_pool(num_workers)


@contextmanager
def _single_threaded_pool(num_workers: int) -> Iterator[Executor]:
    """Workers whose BLAS and OpenMP run one thread: the filters' float sums then come out in
    one order, whatever the machine's cores or load (measured: the same utterances rendered with
    2 BLAS threads and with 1 differed by 1 int16 step in some samples). Workers read the
    variables when they start, which may be at any submit: they stay set while the pool lives."""
    saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
    os.environ.update({name: "1" for name in _THREAD_VARIABLES})
    try:
        with ProcessPoolExecutor(max_workers=num_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            yield pool
    finally:
        _restore(saved)


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # read at start


def _restore(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# ---------------------------------------------------------------------------------------------
# Rendering one utterance (runs in worker processes)
# ---------------------------------------------------------------------------------------------
def render_batch(plans: list[UtterancePlan], root: str, config: SynthConfig) -> list[int]:
    """Render each plan to ``root/plan.audio_path``; return the number of samples of each. The
    synthesizer processes start afresh for every batch (a batch's audio does not depend on which
    worker rendered it, or after what)."""
    restart_synthesizers()
    lengths = []
    for plan in plans:
        audio = render_utterance(plan, config)
        path = Path(root) / plan.audio_path
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()  # encoding in memory, then one write, is ~5x faster than sf to disk
        sf.write(buffer, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        path.write_bytes(buffer.getvalue())
        lengths.append(len(audio))
    return lengths


def render_utterance(plan: UtterancePlan, config: SynthConfig) -> np.ndarray:
    """Speak, trim, warp and resample, pad, add room, noise, microphone and channel, set gain,
    dither: int16 ``(num_samples,)`` at 16 kHz."""
    speech = speak(plan, config)
    rng = np.random.default_rng(plan.seed)
    lead, trail = round(plan.lead_s * SAMPLE_RATE), round(plan.trail_s * SAMPLE_RATE)
    audio = np.concatenate([np.zeros(lead), speech, np.zeros(trail)])
    if plan.room != "none":
        room = effects.far_field if plan.room == "far" else effects.reverb
        audio = room(audio, SAMPLE_RATE, _effect_rng(plan, _ROOM_STREAM))
    if plan.noise != "none":
        speech_rms = float(np.sqrt(np.mean(audio[lead : lead + len(speech)] ** 2)))
        noise = colored_noise(len(audio), plan.noise, rng)
        audio += noise * speech_rms * 10.0 ** (-plan.snr_db / 20.0)
    if plan.microphone:
        audio = effects.microphone(audio, SAMPLE_RATE, _effect_rng(plan, _MICROPHONE_STREAM))
    audio = _channel(audio, plan)
    audio *= 10.0 ** (plan.peak_dbfs / 20.0) / np.max(np.abs(audio))
    audio += rng.normal(0.0, config.dither_lsb / _INT16_SCALE, len(audio))
    return np.clip(np.round(audio * _INT16_SCALE), -32768, 32767).astype(np.int16)


def speak(plan: UtterancePlan, config: SynthConfig) -> np.ndarray:
    """The plan's speech alone: trimmed, warped and resampled to 16 kHz, float64 ``(n,)``."""
    prosody = Prosody(rate=plan.rate, pitch=plan.pitch, pitch_range=plan.pitch_range,
                      seed=plan.seed)  # fmt: skip
    raw, rate = get_synthesizer(plan.synthesizer).synthesize(plan.text, plan.voice, prosody)
    speech = _trim(raw, config.trim_level)
    if speech.size == 0:
        raise RuntimeError(f"{plan.synthesizer} produced silence for {plan.id} ({plan.voice}): "
                           f"{plan.text!r}")  # fmt: skip
    # Read at rate * warp: warp > 1 plays faster and higher, as from a smaller talker.
    return soxr.resample(speech, rate * plan.warp, SAMPLE_RATE).astype(np.float64)


def _channel(audio: np.ndarray, plan: UtterancePlan) -> np.ndarray:
    rng = _effect_rng(plan, _CHANNEL_STREAM)
    if plan.channel == "telephone":
        return effects.telephone(audio, SAMPLE_RATE, rng)
    if plan.channel != "none":
        return effects.codec(audio, SAMPLE_RATE, rng, plan.channel)
    return audio


def _effect_rng(plan: UtterancePlan, stream: int) -> np.random.Generator:
    return np.random.default_rng([plan.seed, stream])


def colored_noise(num_samples: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise ``(num_samples,)``, unit RMS, power ~ 1/f**k (white 0, pink 1, brown 2).

    Shaped in the frequency domain; flat below _NOISE_LOW_HZ so brown noise is not all drift.
    Generated at the next power-of-two length and cut: an FFT of a length with large prime
    factors is ~8x slower.
    """
    length = 1 << max(num_samples - 1, 1).bit_length()
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.maximum(np.fft.rfftfreq(length, d=1.0 / SAMPLE_RATE), _NOISE_LOW_HZ)
    spectrum *= freqs ** (-NOISE_COLORS[color] / 2.0)
    noise = np.fft.irfft(spectrum, n=length)[:num_samples]
    return noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)


def _trim(audio: np.ndarray, level: float) -> np.ndarray:
    """Cut leading and trailing samples whose magnitude is at most ``level``."""
    loud = np.flatnonzero(np.abs(audio) > level)
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio[:0]


# ---------------------------------------------------------------------------------------------
# Output: manifests and summary
# ---------------------------------------------------------------------------------------------
def _synthesize_unlabelled(tmp: Path, root: Path | None, grammar: Grammar, config: SynthConfig,
                           voices: dict, reserved: set[str], render: "_Renderer", fixed: bool,
                           general: Sequence[str] = ()) -> dict:
    """The unlabelled corpus: ``config.hours`` of train-voice audio, cuts without supervisions,
    and a corpus.json (written last) marked ``"unlabelled": true``."""
    plans = _synthesize_train(grammar, config, voices["train"], reserved, render, UNLABELLED_SPLIT,
                              general)
    _write_manifests(tmp, root, UNLABELLED_SPLIT, plans, render.num_samples, with_text=False)
    split = _split_summary(plans, plans, render.num_samples)
    split.pop("unseen_sentence_share", None)
    summary = {"corpus": "slimasr smart-home (synthesized, unlabelled)", "unlabelled": True,
               "seed": config.seed, "sample_rate": SAMPLE_RATE,
               "config": json.loads(json.dumps(asdict(config))), "splits": {UNLABELLED_SPLIT: split},
               "speakers": voices["train"], "fixed_addresses": fixed}
    if general:
        summary["general_text"] = _general_summary(config, general)
    write_json_atomic(tmp / "corpus.json", summary)
    return summary


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(out_dir, "exists and is not a folder")
    if (out_dir / "corpus.json").exists():
        if not overwrite:
            raise DataError(out_dir, "already holds a complete corpus (pass --overwrite to replace it)")
    elif out_dir.exists() and any(p.name != LOCK_NAME for p in out_dir.iterdir()):
        raise DataError(
            out_dir, "is a non-empty folder without corpus.json; refusing to replace it"
        )


def _write_manifests(
    tmp: Path, root: Path | None, split: str, plans: list[UtterancePlan], num_samples: dict[str, int],
    with_text: bool = True,
) -> None:
    """Write the split's recordings, supervisions and cuts; audio paths are relative to the
    corpus folder, or absolute under ``root`` (the final folder) when it is given. Without
    ``with_text`` the cuts have no supervisions and no supervisions file is written."""
    recordings, supervisions, cuts = [], [], []
    for plan in plans:
        n = num_samples[plan.id]
        duration = n / SAMPLE_RATE
        path = plan.audio_path if root is None else str(root / plan.audio_path)
        source = AudioSource(type="file", channels=[0], source=path)
        rec = Recording(plan.id, [source], SAMPLE_RATE, n, duration)
        sup = SupervisionSegment(
            id=plan.id, recording_id=plan.id, start=0.0, duration=duration, channel=0,
            text=plan.text, language="en", speaker=f"{plan.synthesizer}:{plan.voice}",
            custom={"intent": plan.intent, "slots": plan.slots,
                    "synthesizer": plan.synthesizer, "voice": plan.voice},
        )  # fmt: skip
        custom = {name: getattr(plan, name) for name in _CUT_CUSTOM}  # (voice: a property)
        cuts.append(MonoCut(plan.id, 0.0, duration, 0, supervisions=[sup] if with_text else [],
                            recording=rec, custom=custom))  # fmt: skip
        recordings.append(rec)
        supervisions.append(sup)
    RecordingSet.from_recordings(recordings).to_file(tmp / f"{split}_recordings.jsonl.gz")
    if with_text:
        SupervisionSet.from_segments(supervisions).to_file(tmp / f"{split}_supervisions.jsonl.gz")
    CutSet.from_cuts(cuts).to_file(tmp / f"{split}_cuts.jsonl.gz")


def _summary(
    grammar: Grammar,
    config: SynthConfig,
    plans: dict[str, list[UtterancePlan]],
    voices: dict[str, dict[str, list[str]]],
    num_samples: dict[str, int],
    fixed_addresses: bool,
) -> dict:
    """The corpus.json content: deterministic for a seed and package versions (no timings, no
    paths)."""
    splits = {split: _split_summary(items, plans["train"], num_samples)
              for split, items in plans.items()}  # fmt: skip
    return {
        "corpus": "slimasr smart-home (synthesized)",
        "seed": config.seed,
        "sample_rate": SAMPLE_RATE,
        "config": json.loads(json.dumps(asdict(config))),  # tuples as lists, as read back
        "splits": splits,
        "synthesizers": {
            family: {"packages": versions,
                     "speakers": {split: voices[split][family] for split in voices
                                  if family in voices[split]}}
            for family, versions in package_versions(config.synthesizers).items()
        },  # fmt: skip
        "vocabulary_size": len(grammar.vocabulary()),
        "grammar_sentences_at_least": grammar.count_sentences(_GRAMMAR_COUNT_LIMIT),
        "intents": sorted(grammar.intents),
        "test_unseen_sentence_share": splits["test"]["unseen_sentence_share"],
        "excluded_variants": EXCLUDED_VARIANTS,
        "fixed_addresses": fixed_addresses,  # Festival and Flite ran without ASLR
    }


def _general_summary(config: SynthConfig, general: Sequence[str]) -> dict:
    """corpus.json's record of the general sentences: their source and how many there were."""
    return {**source_record(config.general_text), "share": config.general_share,
            "sentences": len(general)}


def _split_summary(
    items: list[UtterancePlan], train: list[UtterancePlan], num_samples: dict[str, int]
) -> dict:
    """Counts, hours, voices and conditions of one split."""
    texts = [p.text for p in items]
    out = {
        "utterances": len(items),
        "hours": round(sum(num_samples[p.id] for p in items) / SAMPLE_RATE / 3600, 4),
        "voices": len({(p.synthesizer, p.voice) for p in items}),
        "speakers": sorted({f"{p.synthesizer}:{p.speaker}" for p in items}),
        "synthesizers": _counts(p.synthesizer for p in items),
        "rooms": _counts(p.room for p in items),
        "channels": _counts(p.channel for p in items),
        "microphone": sum(p.microphone for p in items),
        "distinct_sentences": len(set(texts)),
        "intents": len({p.intent for p in items}),
        "words": len({w for t in texts for w in t.split()}),
    }
    if items and items[0].split != "train":
        train_texts = {p.text for p in train}
        out["unseen_sentence_share"] = round(sum(t not in train_texts for t in texts) / len(texts), 4)
    return out


def _counts(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))
