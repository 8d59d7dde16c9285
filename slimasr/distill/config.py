"""The distillation recipe: a training recipe (the student's model, data handling and optimizer)
plus where the teacher is, how the student is created, and the weights of every loss.

    teacher: {path: exp/teacher}          # a slimasr model dir, or a local HF Wav2Vec2/HuBERT CTC dir
    student: {init: teacher, layers: 2, width: 0.5}   # or init: scratch with model.preset
    loss: {ctc_weight: 0.5, kd_weight: 0.5, temperature: 1.0}
    model: {preset: crnn_student}         # the student when init is scratch
    train: {epochs: 30}

Every loss weight, temperature and threshold lives here with its default; the loss functions in
``slimasr.distill.losses`` take them as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Sequence

from slimasr.errors import ConfigError
from slimasr.train.config import TrainRecipe, load_recipe


@dataclass
class TeacherConfig:
    path: str | None = None  # model directory: slimasr (config.json + model.safetensors) or HF CTC
    # An ensemble: several slimasr teachers with the same tokens, features and CMVN; the soft
    # target is their averaged posteriors (mean of probabilities, then log). path defaults to
    # the first (its front end is the student's; student.init: teacher cuts it down). []: path alone.
    paths: list[str] = field(default_factory=list)
    kind: Literal["auto", "slimasr", "hf"] = "auto"  # auto: HF when config.json names *ForCTC
    # Compute the teacher's frame posteriors once (top-k per frame) into OUT/teacher_cache/ instead
    # of running the teacher on every batch. Hidden-layer matching always runs the teacher online.
    cache: bool = True
    top_k: int = 8  # posteriors kept per frame in the cache (the rest share the remaining mass)
    batch_size: int = 16  # utterances per teacher forward pass when filling the cache
    device: str = "auto"  # where the teacher runs ("auto": the training device)


@dataclass
class StudentConfig:
    """How the student starts. ``scratch``: a fresh model from the recipe's ``model`` section.
    ``path``: the model directory ``path`` as it is (fine-tuning a pruned model).
    ``teacher``: a copy of the teacher (slimasr teachers only) cut down to ``layers`` layers
    (spread over the depth, first and last kept) and/or ``width`` of its units in every prunable
    group (the units with the largest weight magnitude); with ``causal`` (CRNN teachers), then
    made streamable: forward directions only, causal convolutions."""

    init: Literal["scratch", "teacher", "path"] = "scratch"  # where the weights start (above)
    path: str | None = None  # init "path": start from this model directory (e.g. a pruned model)
    layers: int | None = None  # recurrent layers / hidden layers / blocks kept (None: all)
    width: float | None = None  # fraction of units kept per group, 0 < width <= 1 (None: all)
    round_to: int = 8  # kept unit counts are rounded to a multiple of this (at least one)
    # init "teacher", CRNN teacher: after the cut keep each recurrent layer's forward direction
    # only and make the convs causal (same weights): a streamable student (bidirectional: false).
    # A unidirectional teacher just gets causal convs. Scratch students: model.config.bidirectional.
    causal: bool = False


@dataclass
class LossConfig:
    """The objective: ctc_weight * CTC(reference) + kd_weight * KD + hidden_weight * hidden
    + pseudo_weight * CTC(teacher transcript). FINDINGS' prototype used KD/CTC 0.5/0.5, T=2;
    bench/distill_soft.py measured T=1 better (two seeds), T=4 and KD weight 0.9 / 1.0 worse."""

    ctc_weight: float = 1.0  # CTC on the reference transcript (unlabelled cuts have none)
    kd_weight: float = 0.0  # frame-level KL(teacher || student) on T-softened CTC posteriors
    temperature: float = 1.0  # softening of both distributions; the KL is scaled by T^2 (T=1:
    # measured best of 1, 2, 4 for a scratch student, bench/README.md "Where soft labels pay")
    # Blank frames in KD. down_weight: blank_weight on frames where the teacher is confident
    # blank; none: all frames weigh 1; symmetric: drop frames where teacher AND student are
    # confident blank, except a share blank_keep of them (evenly spread). Default: today's.
    blank_selection: Literal["none", "down_weight", "symmetric"] = "down_weight"
    blank_weight: float = 1.0  # weight of frames where the teacher is confident blank (1: no change)
    # blank probability (unsoftened) from which a frame counts as blank: the teacher's for
    # down_weight, both the teacher's and the student's for symmetric
    blank_threshold: float = 0.9
    blank_keep: float = 0.1  # symmetric: share of blank-on-both-sides frames kept (not measured)
    # Delayed KD for causal (streaming) students: the student's frame t learns the teacher's
    # frame t - kd_delay (first kd_delay frames dropped). 0: plain frame KD. Choose it on dev
    # with slimasr.distill.delay.dev_kd_delay (docs/distillation.md).
    kd_delay: int = 0
    # the student's first frames of each utterance are blank: CTC (reference and teacher
    # transcripts) allows no token there and KD has no target there. An offline teacher emits the
    # first word's first tokens on frames 0-2, in the leading silence; a student cut from it
    # keeps guessing them there. 0: off (docs/distillation.md).
    blank_start: int = 0
    # no KD target up to the end of the teacher's first word (its first word-boundary spike, +
    # kd_delay): CTC alone places that word. Use it with blank_start (alone it made things
    # worse): KD then no longer says blank where the student spells that word (docs/distillation.md)
    kd_skip_first_word: bool = False
    hidden_weight: float = 0.0  # hidden-layer matching through learned projections
    # (student index, teacher index) pairs of forward_hidden states (0 = front end, i = layer i);
    # empty: every student layer to the teacher layer at the same relative depth.
    hidden_pairs: list[list[int]] = field(default_factory=list)
    hidden_kind: Literal["l1_cos", "mse"] = "l1_cos"  # DistilHuBERT's L1 - log sigmoid(cos), or MSE
    # the projections' start: random (nn.Linear's init), or the identity where every matched pair
    # has equal dims (a student with the teacher's architecture: a sparse or fine-tuned copy)
    hidden_init: Literal["random", "identity"] = "random"
    cos_weight: float = 1.0  # weight of the cosine part of l1_cos
    pseudo_weight: float = 0.0  # CTC on the teacher's transcript (sequence-level KD)
    pseudo_decode: Literal["greedy", "beam"] = "greedy"  # how the teacher transcribes
    pseudo_lm: str | None = None  # ARPA n-gram for beam pseudo-labels (None: beam without LM)
    pseudo_max_wer: float = 20.0  # drop pseudo-labels farther than this WER (%) from the reference

    def __post_init__(self) -> None:
        weights = (self.ctc_weight, self.kd_weight, self.hidden_weight, self.pseudo_weight)
        if min(weights) < 0 or sum(weights) == 0:
            raise ConfigError("loss: weights must be >= 0 and at least one > 0")
        if self.temperature <= 0:
            raise ConfigError(f"loss.temperature must be > 0, got {self.temperature}")
        if self.kd_delay < 0:
            raise ConfigError(f"loss.kd_delay must be >= 0 frames, got {self.kd_delay}")
        if self.blank_start < 0:
            raise ConfigError(f"loss.blank_start must be >= 0 frames, got {self.blank_start}")
        if not 0 <= self.blank_keep <= 1:
            raise ConfigError(f"loss.blank_keep must be in [0, 1], got {self.blank_keep}")


@dataclass
class DistillRecipe(TrainRecipe):
    """A training recipe plus the teacher, the student's creation and the losses."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    # Cut manifests of audio without transcripts: the teacher's transcripts become their targets.
    unlabelled: list[str] = field(default_factory=list)


def load_distill_recipe(source: str | Path | Mapping | DistillRecipe | None = None,
                        overrides: Sequence[str] = ()) -> DistillRecipe:
    """Like ``slimasr.train.config.load_recipe``; relative paths in a file (model.preset,
    teacher.path, unlabelled, loss.pseudo_lm) resolve against its folder when they exist there."""
    recipe = load_recipe(source, overrides, cls=DistillRecipe)
    base = Path(source).resolve().parent if isinstance(source, (str, Path)) else None
    if base is not None:
        recipe.teacher.path = _near(base, recipe.teacher.path)
        recipe.teacher.paths = [_near(base, p) or p for p in recipe.teacher.paths]
    t = recipe.teacher
    if t.paths and not t.path:
        t.path = t.paths[0]
    if len(t.paths) > 1 and t.path != t.paths[0]:
        raise ConfigError(f"teacher.path ({t.path}) must be the first of teacher.paths {t.paths} "
                          "(the ensemble's front end), or left out")
        recipe.loss.pseudo_lm = _near(base, recipe.loss.pseudo_lm)
        recipe.unlabelled = [_near(base, p) or p for p in recipe.unlabelled]
        recipe.student.path = _near(base, recipe.student.path)
    s = recipe.student
    if s.width is not None and not 0 < s.width <= 1:
        raise ConfigError(f"student.width must be in (0, 1], got {s.width}")
    if s.init == "path" and not s.path:
        raise ConfigError("student.init: path needs student.path (a model directory)")
    if s.layers is not None and s.layers < 1:
        raise ConfigError(f"student.layers must be >= 1, got {s.layers}")
    if s.causal and s.init != "teacher":
        how = ("a scratch student is made causal by model.config.bidirectional=false"
               if s.init == "scratch" else "student.path is used as it is")
        raise ConfigError(f"student.causal: only with student.init=teacher ({how})")
    _check_model_overrides(s.init, overrides)
    return recipe


def _check_model_overrides(init: str, overrides: Sequence[str]) -> None:
    """A ``model.*`` override (``distill --student NAME`` gives ``model.preset=NAME``) chooses the
    student only when ``student.init`` is scratch; otherwise it would be silently ignored."""
    if init == "scratch":
        return
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        if key == "model" or key.startswith("model."):
            source = "cut down from the teacher" if init == "teacher" else "student.path"
            raise ConfigError(f"{override}: has no effect while student.init is {init} (the "
                              f"student is {source}); add student.init=scratch to train that "
                              "model from scratch, or leave it out (--student)")


def _near(base: Path, value: str | None) -> str | None:
    """``value`` made absolute against ``base`` when it names something there."""
    if value and not Path(value).is_absolute() and (base / value).exists():
        return str(base / value)
    return value
