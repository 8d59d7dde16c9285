"""The training loop: ``train_model(recipe, data_dir, out_dir)`` trains a CTC model end to end.

    metrics = train_model("recipes/train_crnn_teacher.yaml", "data/smarthome", "exp/teacher")
    metrics = train_model(..., resume=True)                 # continue after a crash or a kill

What it does, in order:

1. read the train/dev cuts; precompute fbank features once per data directory
   (``DATA_DIR/fbank/<config hash>/``, skipped for training cuts under waveform augmentation);
2. build the tokenizer from normalized training text and the global CMVN; both go into OUT;
3. build the model, filter cuts it cannot learn from (empty, out-of-vocabulary, too short for
   CTC at its subsampling), counting each reason;
4. train: AdamW, warm-up + decay (``schedule.py``), gradient clipping, CTC loss (blank 0,
   ``zero_infinity``), autocast on CUDA; greedy dev WER after every epoch; best (by dev WER) and
   last kept; optional early stopping. A batch whose loss or gradients are not finite is skipped
   (no optimizer step) and counted;
5. write the model directory (best weights, ``config.json`` with tokenizer/features/augment/CMVN/
   provenance, ``training.json``), reload it with ``load_model`` and check a forward pass.

Output folder::

    OUT/config.json, model.safetensors, tokenizer.json, cmvn.json
    OUT/training.json                 dev WER/CER/loss (best and last), time, skip counts, history
    OUT/train_log.csv                 step, epoch, loss, lr, grad_norm, time
    OUT/checkpoints/last/             model, optimizer, RNG, sampler, schedule, counters
    OUT/checkpoints/best/             best weights so far (a model directory)
    OUT/checkpoints/epoch-EEEE/       with ``keep_epochs: N``: each of the last N epochs' weights
                                      (model directories, for ``slimasr average``)
    OUT/checkpoints/recipe.json       the resolved recipe (a resume must keep the model's parts)

Resume: checkpoints are written every ``checkpoint_every_steps`` optimizer steps and at each
epoch end, atomically. With ``num_workers: 0`` a run killed at any moment and resumed takes
exactly the steps an uninterrupted run takes (same batches, RNG draws and updates), so it ends
with bitwise the same weights (tested).

Multi-process: launched by ``torchrun``, each rank trains on its share of the batches with
DistributedDataParallel; losses and dev error counts are summed over ranks; rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from lhotse.dataset.dataloading import make_worker_init_fn
from rich.console import Console
from torch.utils.data import DataLoader

from slimasr import __version__
from slimasr.config import config_to_dict
from slimasr.data.cache import feature_cache_dir, split_cuts
from slimasr.data.dataset import AsrDataset, make_dataloader
from slimasr.data.features import GlobalCmvn
from slimasr.data.validate import BAD_AUDIO, Problem
from slimasr.decode import GreedyDecoder
from slimasr.errors import ConfigError, DataError
from slimasr.evaluate.metrics import ErrorRateStats
from slimasr.frontend import Frontend
from slimasr.io import (
    MODEL_MARKERS,
    atomic_dir,
    check_output_dir,
    clear_output_dir,
    output_lock,
    read_json,
    write_json_atomic,
)
from slimasr.models import AcousticModel, build_model, load_model, save_model
from slimasr.progress import progress_bar
from slimasr.prune.schedule import step_callbacks
from slimasr.text import load_tokenizer
from slimasr.train import distributed
from slimasr.train.checkpoint import load_checkpoint, save_checkpoint
from slimasr.train.config import TrainConfig, TrainRecipe, load_recipe, resolve_model
from slimasr.train.distributed import DistInfo
from slimasr.train.logging import TrainLog
from slimasr.train.prepare import CMVN_NAME, filter_split, make_normalizer, prepare_assets
from slimasr.train.schedule import LrSchedule

CHECKPOINTS = "checkpoints"  # OUT/checkpoints/{last,best}
LAST, BEST = "last", "best"
EPOCH_PREFIX = "epoch-"  # OUT/checkpoints/epoch-0007: the weights after epoch 7 (keep_epochs)
RECIPE_NAME = "recipe.json"  # OUT/checkpoints/recipe.json
# Training results. Not metrics.json: that file holds what `evaluate` measured last (DESIGN.md),
# and the pipeline takes its presence to mean a model was evaluated.
TRAINING_NAME = "training.json"
BLANK_ID = 0  # CTC blank
# Recipe sections a resumed run may not change: they define the model and its inputs.
FROZEN_SECTIONS = ("model", "tokenizer", "normalizer", "features")
DUPLICATE_ID = re.compile(r"_dup\d+$")  # lhotse pads a rank's last batch with such copies
SPM_WORD_SEP = "▁"  # sentencepiece's word-start marker
PARITY_ATOL = 1e-4  # reload check: max |log-prob difference| between saved and trained model
PARITY_CUTS = 2  # dev utterances the reload check runs
# Best dev WER (%) from which a run "learned nothing": an empty hypothesis for every utterance
# scores exactly 100 (all deletions), so a model at or above it is no better than silence.
LEARNED_NOTHING_WER = 100.0


@dataclass
class TrainState:
    """The loop's JSON-able state, saved in every checkpoint."""

    step: int = 0  # optimizer steps taken (skipped batches do not count)
    epoch: int = 0  # current epoch, 0-based
    sampler: dict | None = None  # mid-epoch sampler position; None: the epoch starts afresh
    epoch_loss: list[float] = field(default_factory=lambda: [0.0, 0.0])  # (sum, batches) so far
    train_seconds: float = 0.0  # wall-clock seconds of training so far, over all sessions
    best_wer: float | None = None  # best dev WER (percent) so far
    best_epoch: int | None = None
    best_step: int | None = None
    bad_epochs: int = 0  # validations since the best one (early stopping)
    skipped: dict[str, int] = field(default_factory=lambda: {"nonfinite_loss": 0, "nonfinite_grad": 0})
    history: list[dict] = field(default_factory=list)  # one row per validation
    schedule: dict = field(default_factory=dict)  # LrSchedule.state_dict()
    scaler: dict = field(default_factory=dict)  # GradScaler.state_dict() (fp16 only)


# ---------------------------------------------------------------------------------------------
# Entry point


def train_model(recipe: TrainRecipe | str | Path, data_dir: str | Path, out_dir: str | Path,
                resume: bool = False, overrides: Sequence[str] = (),
                show_progress: bool = True, overwrite: bool = False) -> dict:
    """Train a CTC model on ``data_dir`` (train/dev splits) into the model directory ``out_dir``.

    ``recipe``: a TrainRecipe or a recipe file; ``overrides``: ``key=value`` strings
    (``train.epochs=5``). ``resume``: continue from ``out_dir/checkpoints/last`` (a fresh start
    when there is none). ``overwrite``: replace a model or run already in ``out_dir`` (when not
    resuming one); without it such a folder is refused. ``out_dir`` is locked while training.
    Returns training.json's content plus ``model_dir`` and ``weights_sha256`` (this rank's
    final in-memory weights).
    """
    recipe = load_recipe(recipe, overrides)
    threads = torch.get_num_threads()
    info = distributed.setup(recipe.train.device)
    try:
        with writer_lock(Path(out_dir), "train", info), undo_failed_start(Path(out_dir), info):
            return _train(recipe, Path(data_dir), Path(out_dir), resume, info, show_progress,
                          overwrite)
    finally:
        distributed.cleanup(info)
        torch.set_num_threads(threads)  # num_threads applies to this run only


def _train(recipe: TrainRecipe, data_dir: Path, out_dir: Path, resume: bool, info: DistInfo,
           show_progress: bool, overwrite: bool = False) -> dict:
    cfg = recipe.train
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    console = Console(stderr=True, quiet=not (show_progress and info.is_main))
    resume = _check_out_dir(out_dir, recipe, resume, console, overwrite, [data_dir], info)
    data = _prepare_data(recipe, data_dir, out_dir, resume, info, show_progress)
    seed_everything(cfg.seed)
    name, model_cfg = resolve_model(recipe.model)
    model = build_model(name, model_cfg, vocab_size=data.tokenizer.vocab_size).to(info.device)
    train_cuts, dev_cuts = _filter(data, model, recipe, console)
    trainer = Trainer(model, recipe, info, data.tokenizer, data.normalize, out_dir,
                      console, show_progress)
    loaders = trainer.loaders(train_cuts, dev_cuts, data.cmvn)
    trainer.start(resume)
    trainer.fit(*loaders)
    result = {"world_size": info.world_size, **trainer.summary(data)}
    if info.distributed:
        result["ranks_in_sync"] = distributed.ranks_in_sync(trainer.model, info)
    digest = distributed.weights_digest(trainer.model)
    if info.is_main:
        _finalize(trainer, recipe, data_dir, out_dir, result, dev_cuts)
    distributed.barrier(info)
    return {**result, "model_dir": str(out_dir), "weights_sha256": digest}


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def undo_failed_start(out_dir: Path, info: DistInfo,
                      keep: Callable[[Path], bool] = lambda path: False) -> Iterator[None]:
    """A run that fails before its first checkpoint removes what it wrote into ``out_dir`` (the
    tokenizer, CMVN, recipe, log: half a model directory), never what was there before, nor a
    new entry ``keep`` says is worth keeping (distill: a complete teacher cache)."""
    before = set(out_dir.rglob("*")) if out_dir.is_dir() else set()
    try:
        yield
    except BaseException:
        if info.is_main and not (out_dir / CHECKPOINTS / LAST).exists():
            _remove_new(out_dir, before, keep)
        raise


def _remove_new(out_dir: Path, before: set[Path], keep: Callable[[Path], bool]) -> None:
    """Remove the topmost entries under ``out_dir`` that are not in ``before`` (unless ``keep``)."""
    for path in sorted(set(out_dir.rglob("*")) - before):
        if keep(path):
            continue
        if path.parent == out_dir or path.parent in before:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


@contextlib.contextmanager
def writer_lock(out_dir: Path, verb: str, info: DistInfo) -> Iterator[None]:
    """Rank 0 holds ``out_dir``'s lock (``slimasr.io.output_lock``) for the whole run; when it
    cannot, every rank stops with the same one-line error."""
    with contextlib.ExitStack() as stack:
        error = None
        if info.is_main:
            try:
                stack.enter_context(output_lock(out_dir, verb))
            except DataError as e:
                error = e
        if distributed.any_rank(error is not None, info):
            raise error or DataError(out_dir, "is being written by another process (see rank 0)")
        yield


def _check_out_dir(out_dir: Path, recipe: TrainRecipe, resume: bool, console: Console,
                   overwrite: bool = False, inputs: Sequence[Any] = (),
                   info: DistInfo | None = None) -> bool:
    """Refuse to replace a model or a run unless ``overwrite`` (and never one of ``inputs``);
    check a resumed run keeps its model. Returns whether to resume. Without a checkpoint,
    ``resume`` starts afresh over an unfinished run, not over a finished model."""
    last = out_dir / CHECKPOINTS / LAST
    check_output_dir(out_dir, overwrite=True, inputs=inputs)
    if resume and last.is_dir():
        saved = read_json(out_dir / CHECKPOINTS / RECIPE_NAME)
        now = config_to_dict(recipe)
        changed = [s for s in FROZEN_SECTIONS if saved.get(s) != now[s]]
        if changed:
            raise ConfigError(f"{out_dir / CHECKPOINTS / RECIPE_NAME}: cannot resume with a different "
                              f"{', '.join(changed)} section (the checkpoint's model depends on it)")
        return True
    if resume:
        console.print(f"resume: no checkpoint in {last}, starting afresh", markup=False)
    unfinished = resume and not any((out_dir / name).exists() for name in MODEL_MARKERS)
    check_output_dir(out_dir, overwrite or unfinished, inputs, hint="pass --resume to continue it")
    if (overwrite or unfinished) and (info is None or info.is_main):
        clear_output_dir(out_dir)  # only slimasr's own files: no stale metrics or checkpoints
    if info is not None:
        distributed.barrier(info)  # no rank checks the folder after rank 0 starts writing it
    return False


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class PreparedData:
    tokenizer: Any
    normalize: Any
    cmvn: GlobalCmvn
    train: Any  # CutSet (lazy), not yet filtered
    dev: Any
    report: dict = field(default_factory=dict)  # split -> SkipReport
    train_seconds_audio: float = 0.0  # kept training audio


def _prepare_data(recipe: TrainRecipe, data_dir: Path, out_dir: Path, resume: bool,
                  info: DistInfo, show_progress: bool, reuse_assets: bool | None = None) -> PreparedData:
    """Rank 0 computes features, tokenizer and CMVN; then every rank reads them.
    ``reuse_assets``: keep a tokenizer/CMVN already in ``out_dir`` (default: when resuming;
    distillation copies the teacher's there first)."""
    cfg, normalize = recipe.train, make_normalizer(recipe.normalizer)
    cache = feature_cache_dir(data_dir, recipe.features, cfg.feature_dir)
    precompute_train = cfg.precompute_features and not recipe.augment.on_waveform
    show = show_progress and info.is_main

    def splits() -> tuple[Any, Any]:
        train = split_cuts(data_dir, "train", recipe.features, cache, precompute_train,
                           cfg.feature_jobs, show)
        dev = split_cuts(data_dir, "dev", recipe.features, cache, cfg.precompute_features,
                         cfg.feature_jobs, show)
        return train, dev

    if info.is_main:
        train, _ = splits()
        prepare_assets(train, out_dir, recipe.tokenizer.kind, recipe.tokenizer.vocab_size,
                       normalize, recipe.features, cfg.cmvn_max_cuts,
                       reuse=resume if reuse_assets is None else reuse_assets,
                       show_progress=show)
        (out_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        if not resume:
            write_json_atomic(out_dir / CHECKPOINTS / RECIPE_NAME, config_to_dict(recipe))
    distributed.barrier(info)
    train, dev = splits()  # now cached: only reads
    if cfg.dev_max_cuts is not None:
        dev = dev.subset(first=cfg.dev_max_cuts)
    return PreparedData(load_tokenizer(out_dir), normalize, GlobalCmvn.load(out_dir / CMVN_NAME),
                        train, dev)


def _filter(data: PreparedData, model: AcousticModel, recipe: TrainRecipe,
            console: Console) -> tuple[Any, Any]:
    shift = recipe.features.frame_shift
    train, train_report, seconds = filter_split(data.train, data.tokenizer, data.normalize,
                                                model.output_lengths, shift)
    dev, dev_report, _ = filter_split(data.dev, data.tokenizer, data.normalize,
                                      model.output_lengths, shift)
    for split, report in (("train", train_report), ("dev", dev_report)):
        console.print(f"{split}: {report.summary()}", markup=False, highlight=False)
        for message in report.examples:  # each names its file
            console.print(f"  {message}", markup=False, highlight=False)
        data.report[split] = report
    if train_report.kept == 0 or dev_report.kept == 0:
        raise DataError(None, "no usable training or dev cuts left after filtering "
                              f"(train: {train_report.summary()}; dev: {dev_report.summary()})")
    data.train_seconds_audio = seconds
    return train, dev


# ---------------------------------------------------------------------------------------------
# Loss


def ctc_loss(log_probs: torch.Tensor, out_lens: torch.Tensor, targets: torch.Tensor,
             target_lens: torch.Tensor) -> torch.Tensor:
    """Per-utterance CTC loss ``(N,)`` in fp32. log_probs: (N, T', V), out_lens: (N,),
    targets: (N, S) padded, target_lens: (N,). Blank 0; impossible alignments give 0."""
    return F.ctc_loss(log_probs.transpose(0, 1).float(), targets, out_lens, target_lens,
                      blank=BLANK_ID, reduction="none", zero_infinity=True)


def reduce_loss(per_utt: torch.Tensor, target_lens: torch.Tensor, reduction: str) -> torch.Tensor:
    """The batch objective: "mean" = mean of loss / target length; "sum" = sum / N."""
    if reduction == "mean":
        return (per_utt / target_lens.clamp(min=1).to(per_utt)).mean()
    return per_utt.sum() / per_utt.shape[0]


def compute_loss(model: torch.nn.Module, batch: dict, device: torch.device, reduction: str,
                 autocast: Any) -> torch.Tensor:
    """Forward one batch (``AsrDataset`` keys) and return its scalar CTC objective."""
    x = batch["features"].to(device, non_blocking=True)
    x_lens = batch["feature_lens"].to(device)
    targets, target_lens = batch["targets"].to(device), batch["target_lens"].to(device)
    with autocast:
        log_probs, out_lens = model(x, x_lens)
    return reduce_loss(ctc_loss(log_probs, out_lens, targets, target_lens), target_lens, reduction)


def _zero_surrogate(model: torch.nn.Module) -> torch.Tensor:
    """A loss of 0 touching every parameter: backward gives zero gradients everywhere, which keeps
    DistributedDataParallel's gradient reduction in step when a batch is skipped."""
    return sum((p.sum() * 0.0 for p in model.parameters() if p.requires_grad),
               torch.zeros((), device=next(model.parameters()).device))


def _precision(name: str, device: torch.device, console: Console) -> str:
    """The precision actually used: autocast only on CUDA; "auto" = bf16 where supported."""
    if device.type != "cuda":
        if name in ("bf16", "fp16"):
            console.print(f"precision {name}: autocast is off on {device.type}, training in fp32")
        return "fp32"
    if name == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return name


def _iterate(loader: Any) -> Iterator:
    """``iter(loader)`` without touching torch's global RNG: a DataLoader draws a seed from it,
    and a resumed run creates one iterator more than an uninterrupted run."""
    state = torch.get_rng_state()
    iterator = iter(loader)
    torch.set_rng_state(state)
    return iterator


def _int_keys(obj: Any) -> Any:
    """Undo JSON's int-to-str key conversion (lhotse's sampler state has per-epoch int keys)."""
    if isinstance(obj, dict):
        return {int(k) if isinstance(k, str) and k.isdigit() else k: _int_keys(v)
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_int_keys(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# Trainer


class Trainer:
    """Holds the model, optimizer, schedule and state of one run (all ranks)."""

    def __init__(self, model: AcousticModel, recipe: TrainRecipe, info: DistInfo, tokenizer: Any,
                 normalize: Any, out_dir: Path, console: Console, show_progress: bool):
        cfg = recipe.train
        self.model, self.recipe, self.cfg, self.info = model, recipe, cfg, info
        self.tokenizer, self.normalize, self.out_dir = tokenizer, normalize, out_dir
        self.console, self.show_progress = console, show_progress and info.is_main
        # after_step(trainer) after every optimizer step, summary() into training.json: the
        # recipe's sparsity section (masks are attached here, before DDP, optimizer and resume)
        self.callbacks = step_callbacks(recipe.sparsity, self.export_model())
        self.ddp = distributed.wrap(model, info)
        self.optimizer = make_optimizer(model, cfg)
        self.precision = _precision(cfg.precision, info.device, console)
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=self.precision == "fp16")
        self.schedule = LrSchedule(cfg.schedule, cfg.lr, cfg.warmup_steps, 0, cfg.min_lr_ratio)
        self.state = TrainState()
        word_sep = " " if tokenizer.kind == "char" else SPM_WORD_SEP
        self.decoder = GreedyDecoder(tokenizer.tokens, word_sep)
        self.log = TrainLog(out_dir, cfg.tensorboard) if info.is_main else None
        self.sampler: Any = None  # the training sampler (set by loaders())
        self.plain_loader: Any = None  # training batches without augmentation (early epochs)
        self.dev_set: Any = None
        self.num_train_cuts = 0
        self.stop: str | None = None  # why training ended
        self._train_cuts: Any = None
        self._last = (float("nan"), 0.0)  # (loss, lr) of the last optimizer step
        self._speed = [0.0, 0, 0.0]  # epoch start time, utterances, audio seconds (progress bar)
        self._clock = (time.perf_counter(), 0.0)  # (session start, seconds before it)
        # split -> {"path: problem": None} of cuts batches dropped for unusable audio (this rank's)
        self.bad_audio: dict[str, dict[str, None]] = {"train": {}, "dev": {}}
        self.warnings = Console(stderr=True, quiet=not info.is_main, soft_wrap=True)  # never quiet

    # -- setup ---------------------------------------------------------------------------------

    def autocast(self) -> Any:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.info.device.type, dtype=dtype)

    def loaders(self, train_cuts: Any, dev_cuts: Any, cmvn: GlobalCmvn) -> tuple[Any, Any]:
        """Training loader (duration buckets, sorted first epoch) and dev loader."""
        cfg, recipe = self.cfg, self.recipe
        train_set = AsrDataset(self.tokenizer, self.normalize, recipe.features, cmvn,
                               recipe.augment, train=True)
        dev_set = AsrDataset(self.tokenizer, self.normalize, recipe.features, cmvn, None,
                             train=False)
        self.dev_set = dev_set
        train, self.sampler = make_dataloader(
            train_cuts, train_set, cfg.max_duration, shuffle=True, num_buckets=cfg.num_buckets,
            seed=cfg.seed, num_workers=cfg.num_workers, sort_first_epoch=cfg.sort_first_epoch)
        dev, _ = make_dataloader(dev_cuts, dev_set, cfg.max_duration, shuffle=False,
                                 num_buckets=cfg.num_buckets, seed=cfg.seed,
                                 num_workers=cfg.num_workers)
        if cfg.augment_start_epoch > 0:  # the same sampler, batches without augmentation
            plain_set = AsrDataset(self.tokenizer, self.normalize, recipe.features, cmvn, None,
                                   train=True)
            self.plain_loader = DataLoader(
                plain_set, sampler=self.sampler, batch_size=None, num_workers=cfg.num_workers,
                persistent_workers=cfg.num_workers > 0,
                worker_init_fn=make_worker_init_fn(seed=cfg.seed) if cfg.num_workers > 0 else None)
        self.num_train_cuts = sum(1 for _ in train_cuts)
        self._train_cuts = train_cuts
        return train, dev

    def start(self, resume: bool) -> None:
        """Fresh: set the schedule's length and the per-rank RNG. Resume: load the checkpoint."""
        if resume:
            self._resume()
        else:
            total = self.cfg.decay_steps or self.cfg.epochs * self._batches_per_epoch()
            self.schedule.total_steps = total
            seed_everything(self.cfg.seed + 1 + self.info.rank)  # ranks draw different masks
        if self.log is not None:
            self.log.open(self.state.step if resume else None)
        self._clock = (time.perf_counter(), self.state.train_seconds)

    def _batches_per_epoch(self) -> int:
        """Batches of one shuffled epoch on this rank (cosine length); global RNGs untouched."""
        saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        _, sampler = make_dataloader(self._train_cuts, None, self.cfg.max_duration, shuffle=True,
                                     num_buckets=self.cfg.num_buckets, seed=self.cfg.seed)
        sampler.set_epoch(1)
        count = sum(1 for _ in sampler)
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
        return max(count, 1)

    def _resume(self) -> None:
        path = self.out_dir / CHECKPOINTS / LAST
        loop = load_checkpoint(path, self.model, self.optimizer, restore_rng=self.info.is_main)
        self.state = TrainState(**loop)
        self.schedule.load_state_dict(self.state.schedule)
        if self.state.scaler:
            self.scaler.load_state_dict(self.state.scaler)
        if not self.info.is_main:  # only rank 0's generators are in the checkpoint
            seed_everything(self.cfg.seed + 1 + self.info.rank + self.state.step)
        self.console.print(f"resumed from {path}: epoch {self.state.epoch}, step {self.state.step}",
                           markup=False)

    # -- hooks (a distillation trainer overrides these) ------------------------------------------

    def loss(self, batch: dict) -> torch.Tensor:
        """The scalar objective of one training batch: CTC on the batch's targets."""
        return compute_loss(self.ddp, batch, self.info.device, self.cfg.ctc_reduction,
                            self.autocast())

    def export_model(self) -> AcousticModel:
        """The model saved as ``checkpoints/best`` and as the result (``self.model`` may wrap it
        with training-only parts, such as distillation projections)."""
        return self.model

    # -- the loop ------------------------------------------------------------------------------

    def seconds(self) -> float:
        start, before = self._clock
        return before + time.perf_counter() - start

    def time_fraction(self) -> float:
        """Share of the ``max_minutes`` budget used (0 without one), by rank 0's clock on every
        rank: the lr and the decision to stop must not differ between ranks."""
        if self.cfg.max_minutes is None:
            return 0.0
        mine = torch.tensor([self.seconds() / (60 * self.cfg.max_minutes)], dtype=torch.float64)
        return float(distributed.broadcast_tensor(mine, self.info)[0])

    def stop_reason(self) -> str | None:
        """Why training is over (checked between steps and epochs), or None."""
        cfg, st = self.cfg, self.state
        if cfg.max_steps is not None and st.step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_minutes is not None and self.time_fraction() >= 1.0:
            return "max_minutes"
        if st.epoch >= cfg.epochs:
            return "epochs"
        if cfg.early_stop_patience is not None and st.bad_epochs >= cfg.early_stop_patience:
            return "early_stop"
        return None

    def fit(self, train_loader: Any, dev_loader: Any) -> None:
        """Epochs until a stop reason; validate and checkpoint after each (and when stopping)."""
        self.stop = self.stop_reason() if self.state.history else None  # validate at least once
        while self.stop is None:
            plain = self.plain_loader is not None and self.state.epoch < self.cfg.augment_start_epoch
            partial = self.train_one_epoch(self.plain_loader if plain else train_loader)
            self.end_epoch(self.validate(dev_loader), partial)
            self.stop = self.stop_reason() if self.stop is None else self.stop
        if self.log is not None:
            self.log.close()

    def train_one_epoch(self, loader: Any) -> bool:
        """Train until the epoch ends (False) or a stop reason comes up mid-epoch (True)."""
        st = self.state
        if st.sampler is not None:
            self.sampler.load_state_dict(_int_keys(st.sampler))  # resume mid-epoch
        else:
            self.sampler.set_epoch(st.epoch)
        self.ddp.train()
        window = [0.0, 0, 0.0]  # loss sum, batches, grad-norm sum since the last log row
        with self._progress() as (bar, task):
            for batch in _iterate(loader):
                self.note_bad_audio("train", batch)
                norm = self.train_step(batch)
                self._advance(bar, task, batch)
                if norm is None:
                    continue
                window = self._after_step(window, norm)
                reason = self.stop_reason()
                if reason in ("max_steps", "max_minutes"):
                    self.stop = reason
                    return True
        return False

    def train_step(self, batch: dict) -> float | None:
        """One update. Returns the gradient norm, or None when the batch was skipped because its
        loss or gradients are not finite (on any rank): then no weight or optimizer state moves."""
        lr = self.schedule.apply(self.optimizer, self.state.step, self.time_fraction())
        empty = not batch.get("cut_ids", True)  # every cut had unusable audio: skip like a NaN loss
        loss = torch.tensor(float("nan")) if empty else self.loss(batch)
        if distributed.any_rank(not bool(torch.isfinite(loss)), self.info):
            self.state.skipped["nonfinite_loss"] += 1
            if self.info.distributed:
                _zero_surrogate(self.ddp).backward()
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if not bool(torch.isfinite(norm)):
            self.state.skipped["nonfinite_grad"] += 1
            if self.scaler.is_enabled():  # fp16: the scaler skips the step and lowers its scale
                self.scaler.step(self.optimizer)
                self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        for callback in self.callbacks:
            callback.after_step(self)
        self._last = (float(loss.detach()), lr)
        return float(norm)

    def _after_step(self, window: list, norm: float) -> list:
        """Running losses, a log row every ``log_every_steps``, a checkpoint every N steps."""
        st, cfg = self.state, self.cfg
        loss, lr = self._last
        st.epoch_loss = [st.epoch_loss[0] + loss, st.epoch_loss[1] + 1]
        window = [window[0] + loss, window[1] + 1, window[2] + norm]
        if st.step % cfg.log_every_steps == 0:
            total, count, norms = distributed.all_reduce_sum(window, self.info)
            if self.log is not None:
                self.log.step(st.step, st.epoch, total / count, lr, norms / count, self.seconds())
            window = [0.0, 0, 0.0]
        if st.step % cfg.checkpoint_every_steps == 0:
            self.checkpoint(mid_epoch=True)
        return window

    def end_epoch(self, metrics: dict, partial: bool) -> None:
        """Record the validation, keep the best weights, move to the next epoch, checkpoint."""
        st, cfg = self.state, self.cfg
        losses = distributed.all_reduce_sum(st.epoch_loss, self.info)
        row = {"epoch": st.epoch, "step": st.step, "seconds": round(self.seconds(), 2),
               "partial_epoch": partial, "lr": self.optimizer.param_groups[0]["lr"],  # as applied (clock too)
               "train_loss": losses[0] / max(losses[1], 1), **metrics}
        st.history.append(row)
        if st.best_wer is None or metrics["dev_wer"] < st.best_wer:
            st.best_wer, st.best_epoch, st.best_step, st.bad_epochs = (
                metrics["dev_wer"], st.epoch, st.step, 0)
            if self.info.is_main:
                with atomic_dir(self.out_dir / CHECKPOINTS / BEST) as tmp:
                    save_model(self.export_model(), tmp)
        elif st.best_wer < cfg.early_stop_below_wer:
            st.bad_epochs += 1
        if not partial:
            st.epoch, st.sampler, st.epoch_loss = st.epoch + 1, None, [0.0, 0.0]
        if self.log is not None:
            self.log.dev(st.step, metrics)
        self.console.print(
            f"epoch {row['epoch']}{' (partial)' if partial else ''}: step {st.step}, "
            f"train loss {row['train_loss']:.3f}, dev loss {metrics['dev_loss']:.3f}, "
            f"dev WER {metrics['dev_wer']:.2f}% (best {st.best_wer:.2f}%), "
            f"{row['seconds']:.0f} s", markup=False, highlight=False)
        if cfg.keep_epochs and not partial and self.info.is_main:
            self.keep_epoch(row["epoch"])
        self.checkpoint(mid_epoch=partial)

    def keep_epoch(self, epoch: int) -> None:
        """``keep_epochs``: this epoch's weights as a model directory ``checkpoints/epoch-EEEE``
        (front end included, so ``slimasr average`` or ``evaluate`` reads it as it is); only the
        last ``keep_epochs`` of them stay."""
        folder = self.out_dir / CHECKPOINTS / f"{EPOCH_PREFIX}{epoch:04d}"
        frontend = run_frontend(self.recipe, self.tokenizer, self.out_dir)
        provenance = {"step": "epoch checkpoint", "run": str(self.out_dir), "epoch": epoch,
                      "steps": self.state.step}
        with atomic_dir(folder) as tmp:
            save_model(self.export_model(), tmp, {**frontend_extra(frontend), "provenance": provenance})
            frontend.save(tmp)
        kept = sorted(p for p in (self.out_dir / CHECKPOINTS).glob(f"{EPOCH_PREFIX}[0-9]*") if p.is_dir())
        for old in kept[:-self.cfg.keep_epochs]:
            shutil.rmtree(old)

    def checkpoint(self, mid_epoch: bool) -> None:
        """Save ``checkpoints/last`` (rank 0), with the sampler position when mid-epoch."""
        st = self.state
        st.sampler = self.sampler.state_dict() if mid_epoch else None
        st.train_seconds = self.seconds()
        st.schedule = self.schedule.state_dict()
        st.scaler = self.scaler.state_dict() if self.scaler.is_enabled() else {}
        if self.info.is_main:
            save_checkpoint(self.out_dir / CHECKPOINTS / LAST, self.model, self.optimizer,
                            asdict(st))

    # -- validation ----------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self, loader: Any) -> dict:
        """Greedy decoding of the dev set (sharded over ranks): loss per token, WER, CER."""
        distributed.sync_buffers(self.model, self.info)
        self.model.eval()
        stats = ErrorRateStats(normalize=self.normalize)
        loss_sum, tokens = 0.0, 0
        for batch in _iterate(loader):
            self.note_bad_audio("dev", batch)
            keep = [i for i, cut_id in enumerate(batch["cut_ids"]) if not DUPLICATE_ID.search(cut_id)]
            if not keep:
                continue
            x = batch["features"][keep].to(self.info.device)
            x_lens = batch["feature_lens"][keep].to(self.info.device)
            with self.autocast():
                log_probs, out_lens = self.model(x, x_lens)
            targets, target_lens = batch["targets"][keep], batch["target_lens"][keep]
            loss_sum += float(ctc_loss(log_probs, out_lens, targets.to(x.device),
                                       target_lens.to(x.device)).sum())
            tokens += int(target_lens.sum())
            hyps = self.decoder.decode_batch(log_probs.float(), out_lens)
            stats.append([batch["cut_ids"][i] for i in keep], hyps,
                         [batch["texts"][i] for i in keep])
        self.model.train()
        return self._dev_metrics(stats.summarize(), loss_sum, tokens)

    def _dev_metrics(self, s: dict, loss_sum: float, tokens: int) -> dict:
        errors = s["substitutions"] + s["deletions"] + s["insertions"]
        correct = s["sentence_accuracy"] * s["num_utterances"] / 100.0
        sums = [loss_sum, tokens, errors, s["num_ref_words"], s["char_errors"],
                s["num_ref_chars"], correct, s["num_utterances"], s["num_hyp_words"]]
        loss_sum, tokens, errors, words, char_errors, chars, correct, utts, hyp_words = (
            distributed.all_reduce_sum(sums, self.info))
        return {"dev_loss": loss_sum / max(tokens, 1), "dev_wer": 100.0 * errors / max(words, 1),
                "dev_cer": 100.0 * char_errors / max(chars, 1),
                "dev_sentence_accuracy": 100.0 * correct / max(utts, 1),
                "dev_utterances": int(utts), "dev_hyp_words": int(hyp_words)}

    # -- progress ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _progress(self) -> Iterator[tuple[Any, Any]]:
        """A rich bar over this rank's share of the epoch's utterances (rank 0, if shown)."""
        self._speed = [time.perf_counter(), 0, 0.0]  # start, utterances, audio seconds
        if not self.show_progress:  # not even an invisible bar: rich prints blank lines for it
            yield None, None
            return
        total = max(self.num_train_cuts // self.info.world_size, 1)
        with progress_bar(transient=True) as bar:
            yield bar, bar.add_task(f"epoch {self.state.epoch}", total=total)

    def _advance(self, bar: Any, task: Any, batch: dict) -> None:
        """Move the bar; show loss, lr, utterances per second and speed (x real time)."""
        if bar is None:
            return
        n = len(batch["cut_ids"])
        audio = float(batch["feature_lens"].sum()) * self.recipe.features.frame_shift
        start, utts, seconds = self._speed
        self._speed = [start, utts + n, seconds + audio]
        elapsed = max(time.perf_counter() - start, 1e-9)
        world = self.info.world_size
        loss, lr = self._last
        bar.update(task, advance=n, description=(
            f"epoch {self.state.epoch} loss {loss:.3f} lr {lr:.2e} "
            f"{world * (utts + n) / elapsed:.1f} utt/s {world * (seconds + audio) / elapsed:.0f}x RT"))

    # -- results -------------------------------------------------------------------------------

    def best_validation(self) -> dict:
        """The history row of the best validation (the weights that are saved)."""
        st = self.state
        return next(r for r in st.history if r["step"] == st.best_step and r["epoch"] == st.best_epoch)

    def note_bad_audio(self, split: str, batch: dict) -> None:
        """Remember, and say once, each cut a batch dropped because its audio is unusable."""
        for message in batch.get("bad_audio", ()):
            if message not in self.bad_audio[split]:
                self.bad_audio[split][message] = None
                self.console.print(f"{split}: skipped {message}", markup=False, highlight=False)

    def skip_reports(self, data: PreparedData) -> dict:
        """training.json's ``skipped_cuts``: the filter's report per split plus the cuts batches
        dropped for bad audio (``BAD_AUDIO``; on this rank, so rank 0's share under DDP)."""
        out = {}
        for split, report in data.report.items():
            report = copy.deepcopy(report)
            for message in self.bad_audio.get(split, ()):
                report.add(Problem(BAD_AUDIO, message))
            out[split] = report.as_dict()
        return out

    def summary(self, data: PreparedData) -> dict:
        """training.json: best and last dev metrics, time, counts, skipped cuts and batches."""
        st = self.state
        best, last = self.best_validation(), st.history[-1]
        return {
            "dev_wer": best["dev_wer"], "dev_cer": best["dev_cer"], "dev_loss": best["dev_loss"],
            "dev_sentence_accuracy": best["dev_sentence_accuracy"],
            "best_epoch": st.best_epoch, "best_step": st.best_step,
            "last_dev_wer": last["dev_wer"], "last_dev_loss": last["dev_loss"],
            "epochs": st.epoch, "steps": st.step, "stop_reason": self.stop,
            "train_seconds": round(st.train_seconds, 2),
            "train_cuts": self.num_train_cuts, "train_hours": round(data.train_seconds_audio / 3600, 4),
            "dev_utterances": best["dev_utterances"],
            "skipped_batches": dict(st.skipped), "skipped_cuts": self.skip_reports(data),
            "learned_nothing": learned_nothing(best) is not None,
            "params": sum(p.numel() for p in self.export_model().parameters()),
            "device": str(self.info.device), "precision": self.precision,
            **{k: v for callback in self.callbacks for k, v in callback.summary().items()},
            "history": st.history,
        }


def learned_nothing(metrics: dict) -> str | None:
    """Why dev metrics (a validation row) show the model learned nothing, else None: every dev
    hypothesis is empty (CTC's all-blank plateau), or dev WER is no better than that (>= 100%)."""
    if metrics.get("dev_hyp_words") == 0:
        return "every dev hypothesis is empty"
    if metrics["dev_wer"] >= LEARNED_NOTHING_WER:
        return f"dev WER {metrics['dev_wer']:.1f}% is no better than writing nothing"
    return None


def warn_if_learned_nothing(trainer: Trainer, out_dir: Path) -> None:
    """One loud line when the saved (best) model learned nothing: its results would look like a
    model's but measure an untrained one."""
    if reason := learned_nothing(trainer.best_validation()):
        trainer.warnings.print(f"warning: {out_dir}: learned nothing: {reason}; train longer "
                               "(train.epochs)", markup=False, highlight=False)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and kernels only (not on biases and norm scales)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


# ---------------------------------------------------------------------------------------------
# The model directory


def _finalize(trainer: Trainer, recipe: TrainRecipe, data_dir: Path, out_dir: Path,
              metrics: dict, dev_cuts: Any, step: str = "train", provenance: dict | None = None) -> None:
    """Write the best weights as the model directory with training.json, then reload and check."""
    best = load_model(out_dir / CHECKPOINTS / BEST)
    extra = {
        **frontend_extra(run_frontend(recipe, trainer.tokenizer, out_dir)),
        "augment": config_to_dict(recipe.augment),
        "provenance": {
            "step": step, "data_dir": str(data_dir.resolve()), "recipe": config_to_dict(recipe),
            "epochs": metrics["epochs"], "steps": metrics["steps"],
            "train_seconds": metrics["train_seconds"], "best_dev_wer": metrics["dev_wer"],
            "best_epoch": metrics["best_epoch"], "world_size": metrics["world_size"],
            "slimasr_version": __version__, "torch_version": torch.__version__,
            **(provenance or {}),
        },
    }
    save_model(best, out_dir, extra, compact=recipe.sparsity.active)
    write_json_atomic(out_dir / TRAINING_NAME, metrics)
    warn_if_learned_nothing(trainer, out_dir)
    check_reload(best, out_dir, trainer.dev_set[dev_cuts.subset(first=PARITY_CUTS).to_eager()])


def run_frontend(recipe: TrainRecipe, tokenizer: Any, out_dir: Path) -> Frontend:
    """The front end a run's models are saved with: its tokenizer, features, CMVN, normalizer."""
    return Frontend(tokenizer, recipe.features, GlobalCmvn.load(out_dir / CMVN_NAME), recipe.normalizer)


def frontend_extra(frontend: Frontend) -> dict:
    """The config.json entries of a model directory that Frontend.load and the tokenizer read."""
    tokenizer = frontend.tokenizer
    return {**frontend.config_entry(), "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size}}


def check_reload(model: AcousticModel, model_dir: Path, batch: dict) -> None:
    """Reload ``model_dir`` and check its forward pass matches ``model`` on ``batch``."""
    reloaded = load_model(model_dir)
    model = model.cpu().eval()
    with torch.no_grad():
        expected, lens = model(batch["features"], batch["feature_lens"])
        got, got_lens = reloaded(batch["features"], batch["feature_lens"])
    if not torch.equal(lens, got_lens) or (got - expected).abs().max() > PARITY_ATOL:
        raise RuntimeError(f"{model_dir}: the saved model does not reproduce the trained one")
