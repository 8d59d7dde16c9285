"""The training recipe: which model, tokenizer, features, augmentation, and how to train.

A recipe is one YAML file (see ``recipes/train_*.yaml``)::

    model:
      preset: models/crnn_teacher.yaml     # a preset file, relative to this recipe (or a bundled name)
      config: {rnn_hidden_sizes: [256]}    # fields overriding the preset's model section
    tokenizer: {kind: char}
    features: {num_mel_bins: 80}
    augment: {spec_augment: true}
    train: {epochs: 30, lr: 1.0e-3}

    recipe = load_recipe("recipes/train_crnn_teacher.yaml", overrides=["train.epochs=5"])
    name, model_cfg = resolve_model(recipe.model)

Every section is a dataclass with commented defaults; unknown keys are rejected (slimasr.config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from slimasr.config import check_numbers, from_dict, merge, parse_overrides, read_config_file
from slimasr.data.augment import AugmentConfig
from slimasr.data.features import FeatureConfig
from slimasr.errors import ConfigError
from slimasr.models import load_preset, make_config
from slimasr.prune.schedule import SparsityConfig
from slimasr.text import NormalizerConfig

# Bundled model presets: ``preset: crnn_teacher`` names ``recipes/models/crnn_teacher.yaml``.
BUNDLED_PRESETS = Path(__file__).resolve().parents[2] / "recipes" / "models"
PRESET_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class ModelSpec:
    """Which acoustic model to train: a preset file, or an architecture given inline."""

    # Preset YAML (``architecture`` + ``model`` sections): a path, relative to the recipe file
    # (then to the working directory), or the name of a bundled preset (``crnn_teacher``).
    preset: str | None = "crnn_teacher"
    architecture: str | None = None  # family name ("crnn", "dnn", "conformer") when preset is None
    config: dict = field(default_factory=dict)  # model fields overriding the preset (or all of them)


@dataclass
class TokenizerConfig:
    kind: Literal["char", "bpe", "unigram"] = "char"  # characters (FINDINGS: with x2 subsampling)
    vocab_size: int = 256  # sentencepiece pieces, blank included (ignored for characters)


@dataclass
class TrainConfig:
    """How to train. Defaults follow FINDINGS.md (small batches, sorted first epoch)."""

    seed: int = 0  # seeds model init, batch order, dropout and augmentation
    epochs: int = 30  # passes over the training set (early stopping may end sooner)
    max_steps: int | None = None  # stop after this many optimizer steps (None: no limit)
    max_minutes: float | None = None  # stop after this much training time (None: no limit)
    # Batching (FINDINGS: ~12 utterances per batch train fastest on CPU; no packing).
    max_duration: float = 30.0  # seconds of audio per batch: ~12 utterances of 2-3 s
    num_buckets: int = 10  # duration buckets of lhotse's DynamicBucketingSampler
    sort_first_epoch: bool = True  # epoch 0 runs short to long: leaves the all-blank stage sooner
    num_workers: int = 0  # DataLoader processes; 0 keeps resume exact (no prefetched batches)
    # Epochs trained without augmentation first. Measured on the smart-home corpus (crnn_teacher,
    # 2 CPU cores): with SpecAugment from the first step the loss was still on CTC's all-blank
    # plateau after 790 steps; without it, it left the plateau at ~450 steps.
    augment_start_epoch: int = 0
    # Optimizer: AdamW; weight decay skips biases and norm weights (1-D tensors).
    lr: float = 1.0e-3  # peak learning rate, reached at the end of warm-up
    betas: tuple[float, float] = (0.9, 0.98)  # Adam moment decay rates
    eps: float = 1.0e-8  # Adam denominator epsilon
    weight_decay: float = 1.0e-2  # decoupled weight decay of matrices and conv kernels
    grad_clip: float = 5.0  # clip the global L2 norm of the gradients to this
    # Learning-rate schedule (see slimasr.train.schedule).
    schedule: Literal["cosine", "inverse_sqrt", "constant"] = "cosine"  # decay after warm-up
    warmup_steps: int = 300  # linear warm-up from lr / warmup_steps to lr
    min_lr_ratio: float = 0.05  # cosine ends at lr * min_lr_ratio
    decay_steps: int | None = None  # cosine length in steps (None: epochs x batches per epoch)
    # CTC loss. "mean": each utterance's loss divided by its target length, averaged over the
    # batch (torch's "mean"; gradients do not grow with utterance length). "sum": summed over the
    # batch, divided by the number of utterances (per-utterance loss; long ones weigh more).
    ctc_reduction: Literal["mean", "sum"] = "mean"
    # Compute: "auto" is bf16 autocast on CUDA (fp16 + GradScaler where bf16 is unsupported),
    # fp32 on CPU (autocast is always off on CPU).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1"
    num_threads: int | None = None  # torch CPU threads per process (None: torch's default)
    # Bookkeeping.
    checkpoint_every_steps: int = 200  # also at every epoch end; into OUT/checkpoints/last
    log_every_steps: int = 10  # a row of OUT/train_log.csv (and TensorBoard) every N steps
    early_stop_patience: int | None = None  # stop after N epochs without a better dev WER
    # Patience only counts once the best dev WER is below this: a CTC model first sits on an
    # all-blank plateau near 100% WER for a while, and stopping there ends runs that would learn.
    early_stop_below_wer: float = 95.0
    dev_max_cuts: int | None = None  # validate on the first N dev cuts (None: all)
    # Also keep each of the last N epochs' weights as a model folder OUT/checkpoints/epoch-EEEE
    # (0: none), for `slimasr average` (docs/usage.md, "Checkpoint averaging").
    keep_epochs: int = 0
    # Data preparation.
    precompute_features: bool = True  # fbank once per data dir (off anyway under waveform augment)
    feature_dir: str | None = None  # cache of precomputed features (None: DATA_DIR/fbank)
    feature_jobs: int = 1  # processes computing features
    cmvn_max_cuts: int | None = 2000  # training cuts the global CMVN statistics come from
    tensorboard: bool = True  # also log to OUT/tensorboard when the tensorboard package exists

    def __post_init__(self) -> None:
        check_numbers("train", self, positive=(
            "epochs", "max_steps", "max_minutes", "max_duration", "num_buckets", "lr", "eps",
            "grad_clip", "decay_steps", "num_threads", "checkpoint_every_steps", "log_every_steps",
            "early_stop_patience", "dev_max_cuts", "feature_jobs", "cmvn_max_cuts"),
            non_negative=("seed", "num_workers", "augment_start_epoch", "weight_decay",
                          "warmup_steps", "early_stop_below_wer", "keep_epochs"),
            fractions=("min_lr_ratio",))
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas must be two numbers in [0, 1), got {list(self.betas)}")


@dataclass
class TrainRecipe:
    """Everything ``train_model`` needs besides the data and output folders."""

    model: ModelSpec = field(default_factory=ModelSpec)  # the acoustic model
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)  # output units
    normalizer: NormalizerConfig = field(default_factory=NormalizerConfig)  # transcript cleanup
    features: FeatureConfig = field(default_factory=FeatureConfig)  # log-mel front end
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training augmentation
    train: TrainConfig = field(default_factory=TrainConfig)  # optimization and bookkeeping
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)  # gradual pruning, penalties


def load_recipe(source: str | Path | Mapping | TrainRecipe | None = None,
                overrides: Sequence[str] = (), cls: type = TrainRecipe) -> Any:
    """A recipe from a YAML/JSON file, a mapping or a recipe, with ``key=value`` overrides
    (``train.lr=3e-4``, ``model.config.rnn_hidden_sizes=[256]``).

    A relative ``model.preset`` path in a file is made absolute against that file's folder when
    it exists there, so the recipe works from any working directory.
    """
    if isinstance(source, TrainRecipe):  # (``cls``: a TrainRecipe subclass, e.g. DistillRecipe)
        from slimasr.config import config_to_dict

        source = config_to_dict(source)
    data: Mapping[str, Any] = {}
    base: Path | None = None
    if isinstance(source, (str, Path)):
        data, base = read_config_file(source), Path(source).resolve().parent
    elif source is not None:
        data = source
    try:
        recipe = from_dict(cls, merge(data, parse_overrides(overrides)))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}" if isinstance(source, (str, Path)) else str(e)) from None
    preset = recipe.model.preset
    if base is not None and preset and not Path(preset).is_absolute() and (base / preset).is_file():
        recipe.model.preset = str(base / preset)
    return recipe


def find_preset(preset: str) -> Path:
    """The preset file a ``model.preset`` value names: a path, else a bundled preset's name."""
    path = Path(preset).expanduser()
    if path.is_file():
        return path
    for suffix in ("", *PRESET_SUFFIXES):
        bundled = BUNDLED_PRESETS / f"{preset}{suffix}"
        if bundled.is_file():
            return bundled
    known = ", ".join(sorted(p.stem for p in BUNDLED_PRESETS.glob("*.yaml"))) or "none"
    raise ConfigError(f"model.preset: {preset}: no such file and no bundled preset (bundled: {known})")


def resolve_model(spec: ModelSpec) -> tuple[str, Any]:
    """``(architecture name, config dataclass)`` for a :class:`ModelSpec`."""
    if spec.preset:
        path = find_preset(spec.preset)
        data = read_config_file(path)
        if spec.architecture and spec.architecture != data.get("architecture"):
            raise ConfigError(f"model.architecture {spec.architecture!r} contradicts {path} "
                              f"({data.get('architecture')!r})")
        try:
            return load_preset(merge(data, {"model": spec.config}))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    if not spec.architecture:
        raise ConfigError("model: give a preset, or an architecture with its config")
    return spec.architecture, make_config(spec.architecture, spec.config)
