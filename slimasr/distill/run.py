"""``slimasr distill``: train a student with a teacher's help.

The student is trained by the ordinary training loop (``slimasr.train.loop.Trainer``: schedule,
checkpoints, resume, early stopping, DDP) with a different objective; the projections of
hidden-layer matching live beside the student during training and are dropped from the saved
model. With a slimasr teacher the student shares the teacher's tokenizer, features, CMVN and
normalizer (frame-level losses need one vocabulary and the same input).
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import torch
from lhotse import CutSet, SupervisionSegment
from lhotse.dataset import SimpleCutSampler
from rich.console import Console
from torch import nn

from slimasr.config import config_to_dict, from_dict
from slimasr.data.dataset import AsrDataset
from slimasr.data.features import FeatureConfig
from slimasr.data.manifests import load_cuts
from slimasr.decode import DecodeConfig, word_separator
from slimasr.distill import losses
from slimasr.distill.config import DistillRecipe, load_distill_recipe
from slimasr.distill.student import student_from_config, student_from_teacher
from slimasr.distill.teacher import (
    CACHE_DIR,
    META,
    TeacherCache,
    cache_is_complete,
    copy_frontend,
    fill_cache,
    hf_batches,
    load_teacher,
    teacher_kind,
)
from slimasr.errors import ConfigError, DataError
from slimasr.io import atomic_dir
from slimasr.models import AcousticModel, load_model, save_model
from slimasr.text import NormalizerConfig
from slimasr.train import distributed
from slimasr.train.config import resolve_model
from slimasr.train.loop import (
    Trainer,
    _check_out_dir,
    _filter,
    _finalize,
    _prepare_data,
    seed_everything,
    undo_failed_start,
    writer_lock,
)
from slimasr.data.manifests import transcript

PSEUDO_KEY = "pseudo_label"  # supervision.custom flag of an unlabelled cut's teacher transcript
TEACHER_BATCH_SECONDS = 60.0  # audio per teacher batch when filling the cache (slimasr teacher)
STUDENT_INIT = "student_init"  # OUT/student_init: the created student, reloaded before training


def distill_model(recipe: DistillRecipe | str | Path, data_dir: str | Path, out_dir: str | Path,
                  resume: bool = False, overrides: Sequence[str] = (),
                  show_progress: bool = True, overwrite: bool = False) -> dict:
    """Distill ``recipe.teacher.path`` into a student trained on ``data_dir`` (train/dev splits),
    saved as the model directory ``out_dir`` (locked meanwhile; ``overwrite``: replace a model
    or run already there). A run that fails before its first checkpoint removes what it wrote,
    except a complete teacher cache (expensive, and reused by the next run with the same
    teacher and data). Returns training.json's content (+ ``teacher``)."""
    recipe = load_distill_recipe(recipe, overrides)
    if not recipe.teacher.path:
        raise ConfigError("teacher.path: give the teacher's model directory (--teacher)")
    threads = torch.get_num_threads()
    info = distributed.setup(recipe.train.device)
    try:
        out = Path(out_dir)
        with writer_lock(out, "distill", info), undo_failed_start(out, info, keep=_complete_cache):
            return _distill(recipe, Path(data_dir), Path(out_dir), resume, info, show_progress,
                            overwrite)
    finally:
        distributed.cleanup(info)
        torch.set_num_threads(threads)


def _distill(recipe: DistillRecipe, data_dir: Path, out_dir: Path, resume: bool, info: Any,
             show_progress: bool, overwrite: bool = False) -> dict:
    cfg = recipe.train
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    console = Console(stderr=True, quiet=not (show_progress and info.is_main))
    _no_time_warp_with_frame_targets(recipe, console)
    device = info.device if recipe.teacher.device == "auto" else torch.device(recipe.teacher.device)
    teacher = load_teacher(recipe.teacher.path, recipe.teacher.kind, device, recipe.teacher.paths)
    if teacher.kind == "slimasr":
        _adopt_frontend(recipe, teacher)
    elif recipe.student.init == "teacher":
        raise ConfigError("student.init: teacher needs a slimasr teacher (this one is Hugging Face)")
    inputs = [data_dir, recipe.teacher.path, *recipe.teacher.paths, *recipe.unlabelled,
              recipe.student.path if recipe.student.init == "path" else None]
    resume = _check_out_dir(out_dir, recipe, resume, console, overwrite, inputs, info)
    if teacher.kind == "slimasr" and info.is_main:
        copy_frontend(teacher, out_dir)
    distributed.barrier(info)
    data = _prepare_data(recipe, data_dir, out_dir, resume, info, show_progress,
                         reuse_assets=resume or teacher.kind == "slimasr")
    seed_everything(cfg.seed)
    student = _make_student(recipe, teacher, data.tokenizer.vocab_size)
    cache = None
    if _needs_cache(recipe, teacher):
        cache = _teacher_cache(recipe, teacher, data, data_dir, out_dir, info, show_progress)
        data.train = _with_unlabelled(data.train, recipe, cache, data.normalize)
    if info.is_main:
        _check_student(student, out_dir / STUDENT_INIT, data, recipe)
    distributed.barrier(info)
    student = student.to(info.device)
    train_cuts, dev_cuts = _filter(data, student, recipe, console)
    pairs, projector = _hidden_setup(recipe, student, teacher)
    refs, unlabelled = _references(train_cuts, data.normalize)
    model = DistillModel(student, projector).to(info.device)
    trainer = DistillTrainer(model, recipe, info, data.tokenizer, data.normalize, out_dir, console,
                             show_progress, teacher=teacher, cache=cache, pairs=pairs,
                             refs=refs, unlabelled=unlabelled)
    loaders = trainer.loaders(train_cuts, dev_cuts, data.cmvn)
    trainer.start(resume)
    trainer.fit(*loaders)
    result = {"world_size": info.world_size, **trainer.summary(data),
              "teacher": str(recipe.teacher.path), "loss": config_to_dict(recipe.loss),
              "pseudo_labels_kept": trainer.pseudo_kept, "loss_counts": dict(trainer.counts)}
    if recipe.teacher.paths:
        result["teachers"] = [str(p) for p in recipe.teacher.paths]
    if info.is_main:
        _finalize(trainer, recipe, data_dir, out_dir, result, dev_cuts, step="distill",
                  provenance={"teacher": str(recipe.teacher.path),
                              "student_init": config_to_dict(recipe.student)})
    distributed.barrier(info)
    return {**result, "model_dir": str(out_dir)}


def _references(train_cuts: Any, normalize: Any) -> tuple[dict[str, str], set[str]]:
    """Each training cut's normalized transcript by id, and the ids of the unlabelled cuts (their
    transcript is the teacher's)."""
    refs, unlabelled = {}, set()
    for cut in train_cuts:
        refs[cut.id] = normalize(transcript(cut))
        if any((s.custom or {}).get(PSEUDO_KEY) for s in cut.supervisions):
            unlabelled.add(cut.id)
    return refs, unlabelled


def _complete_cache(path: Path) -> bool:
    """Whether ``path`` is a teacher cache that was written to the end (its meta.json, holding
    the stamp of what it was computed from, is written last)."""
    return path.name == CACHE_DIR and (path / META).is_file()


# ---------------------------------------------------------------------------------------------
# Setup


def _no_time_warp_with_frame_targets(recipe: DistillRecipe, console: Console) -> None:
    """Cached teacher posteriors are per frame of the unwarped input: SpecAugment's time warp
    moves the student's frames by up to ``time_warp`` frames against them (measured: a student
    cut from the teacher got worse from the epoch augmentation started). Masks keep frames in
    place and stay on; the warp is switched off. An online teacher (``teacher.cache: false``,
    hidden-layer matching) reads the same warped features as the student and keeps it."""
    loss, aug = recipe.loss, recipe.augment
    cached = recipe.teacher.cache or teacher_kind(recipe.teacher.path) == "hf"
    if loss.kd_weight > 0 and cached and aug.spec_augment and aug.time_warp > 0:
        console.print(f"time warp off (was {aug.time_warp} frames): cached teacher posteriors are "
                      "aligned to the unwarped frames", markup=False, highlight=False)
        aug.time_warp = 0


def _adopt_frontend(recipe: DistillRecipe, teacher: Any) -> None:
    """The student reads the teacher's features and writes the teacher's tokens."""
    fe = teacher.frontend
    recipe.features = from_dict(FeatureConfig, config_to_dict(fe.features))
    recipe.normalizer = from_dict(NormalizerConfig, config_to_dict(fe.normalizer))
    recipe.tokenizer.kind = fe.tokenizer.kind
    recipe.tokenizer.vocab_size = fe.tokenizer.vocab_size


def _make_student(recipe: DistillRecipe, teacher: Any, vocab_size: int) -> AcousticModel:
    s = recipe.student
    if s.init == "teacher":
        return student_from_teacher(teacher.model, s.layers, s.width, s.round_to, s.causal)
    if s.init == "path":
        student = load_model(s.path)
        if student.vocab_size != vocab_size:
            raise DataError(s.path, f"model has {student.vocab_size} output tokens, the data's "
                                    f"tokenizer {vocab_size}")
        return student.train()
    name, model_cfg = resolve_model(recipe.model)
    return student_from_config(name, model_cfg, vocab_size)


def _check_student(student: AcousticModel, folder: Path, data: Any, recipe: DistillRecipe) -> None:
    """Save the created student, reload it and run it once: a broken student fails here, in
    seconds, not after the first epoch."""
    with atomic_dir(folder) as tmp:
        save_model(student, tmp)
    reloaded = load_model(folder).eval()
    dataset = AsrDataset(data.tokenizer, data.normalize, recipe.features, data.cmvn, None, train=False)
    batch = dataset[data.dev.subset(first=2).to_eager()]
    with torch.no_grad():
        log_probs, _ = reloaded(batch["features"], batch["feature_lens"])
    if not torch.isfinite(log_probs).all():
        raise RuntimeError(f"{folder}: the created student gives non-finite outputs")


def _needs_cache(recipe: DistillRecipe, teacher: Any) -> bool:
    loss = recipe.loss
    frame = loss.kd_weight > 0 and (recipe.teacher.cache or teacher.kind == "hf")
    return frame or loss.pseudo_weight > 0 or bool(recipe.unlabelled)


def _teacher_cache(recipe: DistillRecipe, teacher: Any, data: Any, data_dir: Path, out_dir: Path,
                   info: Any, show_progress: bool) -> TeacherCache:
    """Teacher posteriors and transcripts of every training (and unlabelled) cut, computed once."""
    folder = out_dir / CACHE_DIR
    unlabelled = [load_cuts(p) for p in recipe.unlabelled]
    cuts = data.train if not unlabelled else CutSet.from_cuts(
        [*data.train, *(c for cs in unlabelled for c in cs)])
    stamp = _cache_stamp(recipe, data_dir, data.tokenizer.tokens)
    if info.is_main and not cache_is_complete(folder, stamp):
        total = sum(1 for _ in cuts)
        decode = DecodeConfig(method=recipe.loss.pseudo_decode, lm_path=recipe.loss.pseudo_lm)
        texts = (data.normalize(transcript(c)) for c in data.train)
        if teacher.kind == "slimasr":
            dataset = AsrDataset(data.tokenizer, data.normalize, recipe.features, data.cmvn, None,
                                 train=False)
            # Shortest first: batches of like lengths. Measured on the default corpus's 2,062
            # training cuts with the shipped teacher: 1.0% padding against 40.4% in corpus order,
            # the pass 31 s against 53 s on one thread, the posteriors bit-identical.
            by_length = CutSet.from_cuts(sorted(cuts, key=lambda c: c.duration))
            sampler = SimpleCutSampler(by_length, max_duration=TEACHER_BATCH_SECONDS)
            batches = map(dataset.__getitem__, sampler)  # cuts with unusable audio: in "bad_audio"
        else:
            batches = hf_batches(cuts, recipe.teacher.batch_size)
        fill_cache(teacher, batches, folder, stamp, recipe.teacher.top_k, data.tokenizer.tokens,
                   decode, texts, total, show_progress and info.is_main, kind=data.tokenizer.kind)
    distributed.barrier(info)
    return TeacherCache.load(folder)


def _cache_stamp(recipe: DistillRecipe, data_dir: Path, tokens: Sequence[str]) -> dict:
    teachers = [Path(p) for p in recipe.teacher.paths] or [Path(recipe.teacher.path)]
    signature = [[(p.name, p.stat().st_size, p.stat().st_mtime_ns)
                  for p in sorted(t.glob("*.safetensors"))] for t in teachers]
    names = [str(t.resolve()) for t in teachers]
    one = len(teachers) == 1  # one teacher: the stamp as before ensembles (its cache stays valid)
    return {"teacher": names[0] if one else names, "weights": signature[0] if one else signature,
            "data": str(data_dir.resolve()),
            "unlabelled": list(recipe.unlabelled), "top_k": recipe.teacher.top_k,
            "decode": recipe.loss.pseudo_decode, "lm": recipe.loss.pseudo_lm,
            "tokens": hashlib.sha256("\n".join(tokens).encode()).hexdigest()}


def _with_unlabelled(train: CutSet, recipe: DistillRecipe, cache: TeacherCache,
                     normalize: Any) -> CutSet:
    """The training cuts plus every unlabelled cut whose teacher transcript is not empty, with
    that transcript as its (flagged) supervision."""
    if not recipe.unlabelled:
        return train
    extra = []
    for path in recipe.unlabelled:
        for cut in load_cuts(path):
            text = cache.transcripts.get(cut.id, "")
            if not text:
                continue
            sup = SupervisionSegment(id=f"{cut.id}-pseudo", recording_id=cut.recording_id,
                                     start=0.0, duration=cut.duration, text=text,
                                     custom={PSEUDO_KEY: True})
            extra.append(cut.with_supervisions([sup]) if hasattr(cut, "with_supervisions")
                         else _replace_supervisions(cut, sup))
    return CutSet.from_cuts([*train, *extra])


def _replace_supervisions(cut: Any, sup: SupervisionSegment) -> Any:
    from dataclasses import replace

    return replace(cut, supervisions=[sup])


def _hidden_setup(recipe: DistillRecipe, student: AcousticModel, teacher: Any
                  ) -> tuple[list[tuple[int, int]], nn.Module | None]:
    """The (student, teacher) hidden-state pairs and their projections (None without matching)."""
    if recipe.loss.hidden_weight == 0:
        return [], None
    if teacher.kind != "slimasr" or len(recipe.teacher.paths) > 1:
        raise ConfigError("loss.hidden_weight: hidden-layer matching needs one slimasr teacher "
                          "(not a Hugging Face teacher, nor an ensemble)")
    x = torch.zeros(1, 64, recipe.features.num_mel_bins)
    lens = torch.tensor([64])
    with torch.no_grad():
        s_hidden = student.eval().forward_hidden(x, lens)[2]
        t_hidden = teacher.forward_features(x, lens, hidden=True)[2]
    student.train()
    pairs = [tuple(p) for p in recipe.loss.hidden_pairs] or [
        (i, round(i * (len(t_hidden) - 1) / (len(s_hidden) - 1))) for i in range(1, len(s_hidden))]
    for s, t in pairs:
        if not (0 <= s < len(s_hidden) and 0 <= t < len(t_hidden)):
            raise ConfigError(f"loss.hidden_pairs: ({s}, {t}) out of range (student has "
                              f"{len(s_hidden)} hidden states, teacher {len(t_hidden)})")
    dims = [(s_hidden[s].shape[-1], t_hidden[t].shape[-1]) for s, t in pairs]
    projector = losses.HiddenProjector(dims)
    if recipe.loss.hidden_init == "identity":
        try:
            projector.identity_()
        except ValueError as e:
            raise ConfigError(f"loss.hidden_init=identity: {e}") from None
    return pairs, projector


# ---------------------------------------------------------------------------------------------
# Training


class DistillModel(nn.Module):
    """The student plus training-only projections. ``forward`` is the student's; with
    ``hidden=True`` it also returns the student's hidden states."""

    def __init__(self, student: AcousticModel, projector: nn.Module | None):
        super().__init__()
        self.student = student
        self.projector = projector

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor, hidden: bool = False) -> Any:
        if hidden:
            return self.student.forward_hidden(x, x_lens)
        return self.student(x, x_lens)


class DistillTrainer(Trainer):
    """The training loop with the distillation objective (see ``LossConfig``)."""

    def __init__(self, model: DistillModel, recipe: DistillRecipe, *args: Any, teacher: Any,
                 cache: TeacherCache | None, pairs: list[tuple[int, int]], refs: dict[str, str],
                 unlabelled: set[str]):
        super().__init__(model, recipe, *args)
        self.loss_cfg = recipe.loss
        self.teacher, self.cache, self.pairs = teacher, cache, pairs
        self.pseudo_ok: dict[str, bool] = {}
        self.pseudo_kept = None
        self.unlabelled = unlabelled  # cut ids whose target is the teacher's transcript
        # what the terms saw in this run's training batches: KD frames (all, and of unlabelled
        # cuts) and utterances with a reference CTC target
        self.counts = {"kd_frames": 0, "kd_frames_unlabelled": 0, "ctc_utterances": 0}
        if cache is not None and recipe.loss.pseudo_weight > 0:
            ids = [i for i in refs if i in cache.transcripts]
            keep = losses.pseudo_label_keep([cache.transcripts[i] for i in ids],
                                            [refs[i] for i in ids], recipe.loss.pseudo_max_wer / 100.0)
            self.pseudo_ok = dict(zip(ids, keep))
            self.pseudo_kept = {"kept": int(sum(keep)), "of": len(keep)}

    def export_model(self) -> AcousticModel:
        return self.model.student

    def loss(self, batch: dict) -> torch.Tensor:
        w, dev = self.loss_cfg, self.info.device
        x, x_lens = batch["features"].to(dev), batch["feature_lens"].to(dev)
        targets, target_lens = batch["targets"].to(dev), batch["target_lens"].to(dev)
        ids = batch["cut_ids"]
        online = (w.kd_weight > 0 and self.cache_posteriors() is None) or w.hidden_weight > 0
        with self.autocast():
            log_probs, lens, hidden = self.ddp(x, x_lens, hidden=True)
            t_logp, t_lens, t_hidden = (self.teacher.forward_features(x, x_lens, hidden=w.hidden_weight > 0)
                                        if online else (None, None, []))
        log_probs = log_probs.float()
        total = torch.zeros((), device=dev)
        labelled = torch.tensor([not self._pseudo(i) for i in ids], dtype=torch.float32, device=dev)
        if w.ctc_weight > 0:
            total = total + w.ctc_weight * losses.ctc_term(
                losses.force_blank_start(log_probs, lens, target_lens, w.blank_start), lens,
                targets, target_lens, self.cfg.ctc_reduction, labelled)
            self.counts["ctc_utterances"] += int(labelled.sum())
        if w.kd_weight > 0:
            total = total + w.kd_weight * self._kd_term(log_probs, lens, ids, t_logp, t_lens)
        if w.hidden_weight > 0:
            total = total + w.hidden_weight * self._hidden_term(hidden, t_hidden, t_lens, lens)
        if w.pseudo_weight > 0:
            total = total + w.pseudo_weight * self._pseudo_term(log_probs, lens, ids, batch)
        return total

    def _kd_term(self, log_probs: torch.Tensor, lens: torch.Tensor, ids: list[str],
                 t_logp: torch.Tensor | None, t_lens: torch.Tensor | None) -> torch.Tensor:
        """Frame KD of every cut of the batch, labelled or not (the teacher's posteriors from the
        cache, else ``t_logp``: (N, T', V) from the online teacher), on the student's frames
        that ``_kd_targets`` keeps."""
        w, dev = self.loss_cfg, log_probs.device
        if self.cache_posteriors() is not None:
            t_logp, t_lens = self.cache.dense(ids, max(int(self.cache.logp[i].shape[0]) for i in ids))
        t_logp, t_lens = t_logp.float().to(dev), t_lens.to(dev)
        if t_logp.shape[1] != log_probs.shape[1] or not torch.equal(t_lens, lens):
            t_logp = losses.align_log_probs(t_logp, t_lens, lens, log_probs.shape[1])
        t_logp, frames = self._kd_targets(t_logp, lens)
        self.counts["kd_frames"] += int(frames.sum())
        unl = torch.tensor([self._pseudo(i) for i in ids], device=dev)
        self.counts["kd_frames_unlabelled"] += int(frames[unl].sum())
        return losses.kd_kl(log_probs, t_logp, lens, w.temperature, w.blank_weight,
                            w.blank_threshold, w.blank_selection, w.blank_keep, frames)

    def _kd_targets(self, t_logp: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's posteriors (N, T, V) on the student's frames, delayed by ``loss.kd_delay``,
        and the (N, T) frames that keep a target: none on the first ``loss.blank_start``, nor, with
        ``loss.kd_skip_first_word``, up to the end of the teacher's first word (+ the delay)."""
        w = self.loss_cfg
        first_word = (losses.first_word_end(t_logp, lens, *self._word_boundaries) + w.kd_delay
                      if w.kd_skip_first_word else None)  # on the teacher's own frames
        t_logp, frames = losses.delay_frames(t_logp, lens, w.kd_delay)
        frames[:, :w.blank_start] = False
        if first_word is not None:
            t = torch.arange(frames.shape[1], device=frames.device)
            frames &= t[None, :] >= first_word[:, None]
        return t_logp, frames

    @cached_property
    def _word_boundaries(self) -> tuple[list[int], int]:
        """The tokens that mark a word boundary and which of their spikes ends the first word:
        the space of a character vocabulary (the first), else SentencePiece's word-initial
        pieces (the second; the first word starts with one)."""
        sep, tokens = word_separator(self.tokenizer.kind), self.tokenizer.tokens
        if self.tokenizer.kind == "char":
            if sep not in tokens:
                raise ConfigError(f"loss.kd_skip_first_word: the tokenizer has no word separator "
                                  f"token ({sep!r}) to find the first word's end by")
            return [tokens.index(sep)], 1
        return [i for i, t in enumerate(tokens) if t.startswith(sep)], 2

    def cache_posteriors(self) -> TeacherCache | None:
        """The cache when it holds frame posteriors and is meant to replace the online teacher."""
        if self.cache is None or self.cache.vocab_size is None:
            return None
        return self.cache if (self.recipe.teacher.cache or self.teacher.kind == "hf") else None

    def _pseudo(self, cut_id: str) -> bool:
        """Whether the cut is unlabelled audio (its target is the teacher's transcript)."""
        return cut_id in self.unlabelled

    def _hidden_term(self, hidden: list[torch.Tensor], t_hidden: list[torch.Tensor],
                     t_lens: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        projector = self.model.projector
        terms = []
        for k, (s, t) in enumerate(self.pairs):
            target = t_hidden[t].float()
            if target.shape[1] != hidden[s].shape[1] or not torch.equal(t_lens, lens):
                target = losses.align_time(target, t_lens, lens, hidden[s].shape[1])
            projected = projector.proj[k](hidden[s].float())
            terms.append(losses.hidden_loss(projected, target.detach(), lens,
                                            self.loss_cfg.hidden_kind, self.loss_cfg.cos_weight))
        return torch.stack(terms).mean()

    def _pseudo_term(self, log_probs: torch.Tensor, lens: torch.Tensor, ids: list[str],
                     batch: dict) -> torch.Tensor:
        """CTC on the teacher's transcripts of the batch's cuts that pass the WER filter (an
        unlabelled cut's target already is its teacher transcript)."""
        texts, weights = [], []
        for i, cut_id in enumerate(ids):
            unlabelled = self._pseudo(cut_id)
            text = batch["texts"][i] if unlabelled else self.cache.transcripts.get(cut_id, "")
            ok = bool(text) and (unlabelled or self.pseudo_ok.get(cut_id, False))
            texts.append(text if ok else batch["texts"][i])  # a dropped cut keeps a valid target
            weights.append(1.0 if ok else 0.0)
        targets, target_lens = self.dev_set._targets(texts)
        dev = log_probs.device
        target_lens = target_lens.to(dev)
        log_probs = losses.force_blank_start(log_probs, lens, target_lens, self.loss_cfg.blank_start)
        return losses.ctc_term(log_probs, lens, targets.to(dev), target_lens, self.cfg.ctc_reduction,
                               torch.tensor(weights, device=dev))
