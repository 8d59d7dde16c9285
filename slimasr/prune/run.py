"""``slimasr prune``: score, plan, cut and fine-tune, step by step, into a normal model directory.

    prune_model_dir("exp/teacher", "data/smarthome", "exp/pruned",
                    PruneConfig(criterion="taylor", target=PruneTarget("macs", 0.5), steps=2,
                                finetune_epochs=3, distill=True))

Each step removes units so that the model's cost falls to ``(1 - fraction) ** (k / steps)`` of the
original (MACs or parameters), then fine-tunes (CTC, or CTC + KD from the unpruned model with
``distill``) through ``slimasr.distill.distill_model`` with the pruned model as the student.
``remove_layers`` first drops whole layers (Conformer blocks) chosen by measured dev loss;
``ratios`` replaces the cost target by explicit per-group shares. A target with latency in it
(``target.kind: latency`` or ``target.latency_fraction``) measures a latency table of the current
model at every step (``slimasr.prune.latency``, saved as ``steps/k/latency_table.json`` and plotted beside it; or uses
``latency_table``, measured on the device, at the first step) and records the pruned model's
predicted and measured batch-1 latency. Steps live in ``OUT/steps/k``; the last one becomes ``OUT`` (no masks: dense, smaller tensors, the
config holds the new widths, ``load_model`` rebuilds it), with ``prune.json`` recording what was
removed and measured.

``method: unstructured`` zeroes single weights instead (``slimasr.prune.unstructured``: magnitude
or gradient saliency, per layer or global) and fine-tunes with the mask kept
(``sparsity.keep_masks``), or reaches the sparsity during fine-tuning (``gradual``, Zhu & Gupta);
the model keeps its shapes and is saved compactly (``"sparse": true``; ``unstructured.storage``:
its values in fp16 or int8, the model then written again and scored as stored), and prune.json
records the sparsity per layer, the nonzero parameters and the bytes on disk. ``regularize`` adds
a sparsity penalty to the fine-tuning; ``remove_below`` removes, instead of meeting a target, the
units a group-lasso (or slimming) run emptied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from lhotse.dataset import SimpleCutSampler
from rich.console import Console

from slimasr.config import check_numbers, config_to_dict
from slimasr.data.dataset import AsrDataset
from slimasr.distill import distill_model
from slimasr.errors import ConfigError, DataError
from slimasr.evaluate.cost import measure_latency, model_bytes
from slimasr.frontend import Frontend
from slimasr.io import (
    atomic_dir,
    check_output_dir,
    clear_output_dir,
    output_lock,
    read_json,
    write_json_atomic,
)
from slimasr.models import AcousticModel, load_model, save_model
from slimasr.models.io import read_model_config
from slimasr.prune.gates import DEPTH
from slimasr.prune.groups import layer_stack, prunable_groups
from slimasr.prune.importance import magnitude_scores, score_model
from slimasr.prune.latency import (
    DEFAULT_RUNS,
    LatencyTable,
    measure_latency_table,
    plot_latency_table,
    relative_latency,
)
from slimasr.prune.learned import LearnedConfig, apply_keep, depth_layers, learned_prune
from slimasr.prune.plan import EPS, PruneTarget, model_cost, plan, plan_from_ratios
from slimasr.prune.regularize import RegularizeConfig, norm_scale_scores, weak_units
from slimasr.prune.sensitivity import plot_sensitivity, ratios_from_scan, save_scan, sensitivity_scan
from slimasr.prune.surgery import prune_model, select_layers
from slimasr.prune.unstructured import UnstructuredConfig, select_tensors, sparsify_, sparsity_report, squash_
from slimasr.train.loop import CHECKPOINTS, LAST, TRAINING_NAME, compute_loss
from slimasr.data.cache import feature_cache_dir, feature_cuts

CRITERIA = ("magnitude", "taylor", "activation", "apoz", "sensitivity", "random", "learned")
PRUNE_JSON = "prune.json"
STEPS_DIR = "steps"
RUN_JSON = "run.json"  # OUT/steps/run.json: the run's config and inputs, written first (--resume reads it)
ROW_JSON = "row.json"  # OUT/steps/k/row.json: a completed step's record row (skipped on --resume)
PRUNED_ROW_JSON = "pruned_row.json"  # OUT/steps/k/: the row once step k's pruned model is saved
RESUME_HINT = "pass --resume to continue it"
LATENCY_TOLERANCE = 0.01  # a latency plan may miss its goal by this share of the current time
LATENCY_ATTEMPTS = 3  # plans per step when the measured time misses the goal
MAX_LATENCY_SHARE = 0.95  # a re-plan never asks for more than this share of the time
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer.model", "cmvn.json",
               "training.json", "train_log.csv")


@dataclass
class PruneConfig:
    # "structured": remove units (a dense, smaller model); "unstructured": zero single weights
    # (the ``unstructured`` section; same shapes, saved compactly, fine-tuned with the mask kept).
    method: Literal["structured", "unstructured"] = "structured"
    # "learned": hard-concrete gates trained with KD under the cost target (the ``learned`` section)
    criterion: Literal["magnitude", "taylor", "activation", "apoz", "sensitivity", "random", "learned"] = "taylor"
    target: PruneTarget = field(default_factory=PruneTarget)  # what to remove, how much, where
    # Per-group shares of units to remove, e.g. {"rnns.0": 0.3, "rnns.2": 0.5}: when given, they
    # replace the cost target (one-shot; the criterion still picks which units go).
    ratios: dict[str, float] = field(default_factory=dict)
    # Whole layers (Conformer blocks; RNN / DNN layers where widths chain) removed before width
    # pruning at the first step: greedily, the layer whose removal raises the dev loss least.
    remove_layers: int = 0
    steps: int = 1  # 1: one-shot; K: prune a little and fine-tune, K times (iterative)
    finetune_epochs: int = 2  # fine-tuning epochs after every step (0: none)
    distill: bool = False  # fine-tune with the unpruned model as a KD teacher (CTC 0.5 + KD 0.5)
    distill_overrides: list[str] = field(default_factory=list)  # e.g. ["loss.temperature=1.0"]
    # Fine-tuning recipe changes (the rest: slimasr.train defaults, the model's own front end).
    # Measured on the CRNN teacher at 50% of the MACs, 4 KD epochs: lr 1e-3 gave dev WER 24.5%,
    # 5e-4 (with time warp, since fixed) 42.8%. No short-to-long first epoch: the model has left
    # CTC's all-blank stage already.
    finetune_overrides: list[str] = field(default_factory=lambda: [
        "train.lr=1.0e-3", "train.warmup_steps=100", "train.augment_start_epoch=0",
        "train.sort_first_epoch=false"])
    calibration_cuts: int = 256  # training cuts that score units (taylor, activation)
    calibration_seconds: float = 30.0  # audio per calibration batch
    sensitivity_ratios: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])  # scan points
    sensitivity_cuts: int = 64  # dev cuts whose CTC loss the sensitivity scan measures
    # Which units of a group the sensitivity scan (and its plan) removes first: the lowest
    # scores of this criterion. The scan measures how much of each group can go; this says which.
    sensitivity_order: Literal["magnitude", "taylor", "activation", "apoz"] = "taylor"
    # Latency targets: a table measured on the target device (JSON from a previous prune's
    # steps/1/latency_table.json or slimasr.prune.latency), used at the first step instead of
    # measuring here; later steps always measure the narrower model on this machine.
    latency_table: str | None = None
    latency_threads: int = 1  # torch threads the latency table and the final timing use
    latency_runs: int = DEFAULT_RUNS  # timed runs per measured width in the table
    seed: int = 0  # random criterion, fine-tuning
    num_threads: int | None = None  # torch threads (None: torch's default)
    unstructured: UnstructuredConfig = field(default_factory=UnstructuredConfig)  # method unstructured
    # Unstructured: reach the sparsity during the fine-tuning along Zhu & Gupta's cubic schedule
    # (sparsity.gradual; refine it with finetune_overrides) instead of pruning at once.
    gradual: bool = False
    regularize: RegularizeConfig = field(default_factory=RegularizeConfig)  # penalty while fine-tuning
    # Structured, instead of a target: remove every unit whose score is at most this; the score
    # is "group_norm" (the L2 norm of the unit's weights: what group lasso drives to zero) or
    # "norm_scale" (|gamma| of its norm: network slimming; units without a norm stay).
    remove_below: float | None = None
    remove_by: Literal["group_norm", "norm_scale"] = "group_norm"  # the score remove_below reads
    learned: LearnedConfig = field(default_factory=LearnedConfig)  # criterion learned: mask training

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ConfigError(f"criterion: unknown {self.criterion!r}; expected one of {CRITERIA}")
        if self.steps < 1 or self.finetune_epochs < 0 or self.remove_layers < 0:
            raise ConfigError("steps must be >= 1, finetune_epochs and remove_layers >= 0")
        if self.latency_threads < 1 or self.latency_runs < 1:
            raise ConfigError("latency_threads and latency_runs must be >= 1")
        check_numbers("prune", self, positive=("calibration_cuts", "calibration_seconds",
                                               "sensitivity_cuts", "num_threads"))
        if not all(0 < r < 1 for r in self.sensitivity_ratios):
            raise ConfigError(f"prune.sensitivity_ratios must be in (0, 1), got {self.sensitivity_ratios}")
        if self.ratios and self.steps != 1:
            raise ConfigError("ratios: explicit per-group shares are one-shot (steps: 1)")
        bad = {k: v for k, v in self.ratios.items() if not 0.0 <= float(v) < 1.0}
        if bad:
            raise ConfigError(f"ratios: shares must be in [0, 1), got {bad}")
        self._check_method()

    def _check_method(self) -> None:
        if self.criterion == "learned" and (self.method != "structured" or self.steps != 1 or self.ratios
                                            or self.remove_below is not None
                                            or self.target.kind == "latency"):
            raise ConfigError("criterion learned: structured, one step, a macs or params target "
                              "(a latency target only beside it; no ratios or remove_below)")
        if self.criterion == "learned":
            self.learned.refuse_with(latency=self.target.latency_share is not None)
        check_numbers("prune", self, non_negative=("remove_below",))
        if self.gradual and (self.method != "unstructured" or self.finetune_epochs == 0 or self.steps != 1):
            raise ConfigError("gradual: needs method unstructured, finetune_epochs > 0 and steps: 1 "
                              "(the schedule runs during the fine-tuning)")
        if self.gradual and self.unstructured.criterion != "magnitude":
            raise ConfigError(f"gradual: the schedule ranks weights by magnitude during training; "
                              f"criterion {self.unstructured.criterion} is one-shot only (drop --gradual)")
        if self.remove_below is not None and (self.method != "structured" or self.ratios or self.steps != 1):
            raise ConfigError("remove_below: structured, one step, and not with ratios")
        if self.method == "unstructured" and (self.ratios or self.remove_layers or self.latency_table
                                              or self.target.latency_share is not None):
            raise ConfigError("method unstructured: ratios, remove_layers and latency targets are "
                              "structured settings (unstructured.sparsity says how much goes)")


def prune_model_dir(model_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
                    cfg: PruneConfig, show_progress: bool = True, overwrite: bool = False,
                    resume: bool = False) -> dict:
    """Prune the model directory ``model_dir`` into ``out_dir``; returns prune.json's content.
    ``out_dir`` is locked meanwhile; one that holds a model or a run is refused unless
    ``overwrite`` (then cleared of it first), and the input model never is replaced.
    ``resume``: continue the unfinished (structured) run in ``out_dir`` (same config and inputs,
    else a DataError): completed steps are skipped, an interrupted one reruns (its mask training
    and fine-tuning resume from their checkpoints); with no run there, start afresh."""
    model_dir, data_dir, out_dir = Path(model_dir), Path(data_dir), Path(out_dir)
    read_model_config(model_dir)  # one-line error for a broken model directory
    if resume and cfg.method == "unstructured":
        raise ConfigError("--resume: an unstructured prune cannot be resumed; pass --overwrite to "
                          "start it again")
    inputs = [model_dir, data_dir, cfg.latency_table]
    check_output_dir(out_dir, True, inputs)  # an input is never the output: not even locked
    info = _run_info(cfg, model_dir, data_dir)
    with output_lock(out_dir, "prune"):  # then, as the only writer, what the folder holds
        if not _resumable(out_dir, info, resume, overwrite, show_progress):
            _start_run(out_dir, info, overwrite, inputs)
        threads = torch.get_num_threads()
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        try:
            with _undo_empty_start(out_dir):
                if cfg.method == "unstructured":
                    return _prune_unstructured(model_dir, data_dir, out_dir, cfg, show_progress)
                return _prune(model_dir, data_dir, out_dir, cfg, show_progress)
        finally:
            torch.set_num_threads(threads)


@contextlib.contextmanager
def _undo_empty_start(out_dir: Path) -> Iterator[None]:
    """A run that fails before writing anything but steps/run.json leaves nothing behind (the
    output lock then removes the folder it created)."""
    try:
        yield
    except BaseException:
        steps = out_dir / STEPS_DIR
        if steps.is_dir() and [p.name for p in steps.iterdir()] == [RUN_JSON]:
            shutil.rmtree(steps)
        raise


def _run_info(cfg: PruneConfig, model_dir: Path, data_dir: Path) -> dict:
    """steps/run.json: what a resumed run must share with the one it continues."""
    return {"config": config_to_dict(cfg), "model": str(model_dir.resolve()),
            "data": str(data_dir.resolve())}


def _unfinished(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a prune run that started (steps/run.json) and did not publish
    prune.json (written last)."""
    return (out_dir / STEPS_DIR / RUN_JSON).is_file() and not (out_dir / PRUNE_JSON).exists()


def _resumable(out_dir: Path, info: dict, resume: bool, overwrite: bool, show: bool) -> bool:
    """With ``resume``: True for an unfinished run of the same config and inputs (a DataError
    naming the fields that differ otherwise); a finished run is refused unless ``overwrite``;
    no run at all: False (start afresh, as ``train --resume`` does)."""
    if not resume:
        return False
    if _unfinished(out_dir):
        saved = read_json(out_dir / STEPS_DIR / RUN_JSON)
        differ = [f"config.{k}" for k in sorted(set(saved.get("config", {})) | set(info["config"]))
                  if saved.get("config", {}).get(k) != info["config"].get(k)]
        differ += [k for k in ("model", "data") if saved.get(k) != info[k]]
        if differ:
            raise DataError(out_dir, f"cannot resume: its run has a different {', '.join(differ)}; pass "
                                     "the same settings, or --overwrite to start again")
        return True
    if (out_dir / PRUNE_JSON).exists() and not overwrite:
        raise DataError(out_dir, "holds a finished prune run (prune.json), nothing to resume; pass "
                                 "--overwrite to replace it, or choose another output folder")
    Console(stderr=True, quiet=not show).print(
        f"resume: no unfinished prune run in {out_dir}, starting afresh", markup=False, highlight=False)
    return False


def _start_run(out_dir: Path, info: dict, overwrite: bool, inputs: list) -> None:
    """A fresh run: refuse (or, ``overwrite``, clear) what ``out_dir`` holds, then write
    steps/run.json first."""
    resumable = _unfinished(out_dir) and info["config"]["method"] == "structured"
    check_output_dir(out_dir, overwrite, inputs, hint=RESUME_HINT if resumable else "")
    if overwrite:
        clear_output_dir(out_dir)
    write_json_atomic(out_dir / STEPS_DIR / RUN_JSON, info)


@dataclass
class _Run:
    """What every step of a structured prune reads."""
    cfg: PruneConfig
    model_dir: Path
    data_dir: Path
    frontend: Frontend
    original: AcousticModel
    calib: list[dict]
    sens_batches: list[dict]
    cost0: dict[str, float]
    console: Console
    show: bool


def _prune(model_dir: Path, data_dir: Path, out_dir: Path, cfg: PruneConfig, show: bool) -> dict:
    console = Console(stderr=True, quiet=not show)
    frontend = Frontend.load(model_dir)
    original = load_model(model_dir).eval()
    cache = feature_cache_dir(data_dir, frontend.features)
    train = feature_cuts(data_dir, "train", frontend.features, cache, show_progress=show)
    dev = feature_cuts(data_dir, "dev", frontend.features, cache, show_progress=show)
    # learned masks train on the calibration cuts in batches of their own size
    seconds = cfg.learned.batch_seconds if cfg.criterion == "learned" else cfg.calibration_seconds
    calib = list(_batches(frontend, train, cfg.calibration_cuts, seconds))
    sens_batches = list(_batches(frontend, dev, cfg.sensitivity_cuts, cfg.calibration_seconds))
    cost0 = {k: model_cost(original, k) for k in ("macs", "params")}
    record: dict[str, Any] = {
        "source": str(model_dir), "criterion": cfg.criterion, "config": config_to_dict(cfg),
        "original": {**cost0, "widths": _widths(original)}, "steps": []}
    run = _Run(cfg, model_dir, data_dir, frontend, original, calib, sens_batches, cost0, console, show)
    model, current_dir = original, model_dir
    latency0: float | None = None  # the unpruned model's time in the first latency table
    for k in range(1, cfg.steps + 1):
        step_dir = out_dir / STEPS_DIR / str(k)
        model, current_dir, row, latency0 = _step(run, k, step_dir, model, latency0)
        record["steps"].append(row)
    _finish_record(record, model, cost0, latency0)
    _publish(current_dir, out_dir, record)
    return record


def _step(run: _Run, k: int, step_dir: Path, model: AcousticModel, latency0: float | None
          ) -> tuple[AcousticModel, Path, dict, float | None]:
    """Step ``k``: prune, then fine-tune; returns the model, its folder, the record row and the
    unpruned latency. A step completed before (steps/k/row.json: a resumed run) is not redone:
    its row is read and its model loaded from its last folder."""
    done = _read_step(step_dir / ROW_JSON)
    if done is not None:
        current_dir = step_dir / "finetuned" if (step_dir / "finetuned" / TRAINING_NAME).is_file() \
            else step_dir / "pruned"
        run.console.print(f"step {k}: completed before, skipped", markup=False, highlight=False)
        return load_model(current_dir).eval(), current_dir, *done
    model, row, latency0 = _prune_step(run, k, step_dir, model, latency0)
    current_dir = step_dir / "pruned"
    if run.cfg.finetune_epochs > 0:
        model, current_dir = _finetune_step(run, step_dir, row)
    write_json_atomic(step_dir / ROW_JSON, {"row": row, "latency0": latency0})
    return model, current_dir, row, latency0


def _read_step(path: Path) -> tuple[dict, float | None] | None:
    """The row and unpruned latency a step saved at ``path`` (None: not there)."""
    if not path.is_file():
        return None
    saved = read_json(path)
    return saved["row"], saved["latency0"]


def _prune_step(run: _Run, k: int, step_dir: Path, model: AcousticModel, latency0: float | None
                ) -> tuple[AcousticModel, dict, float | None]:
    """Prune the model of step ``k - 1`` into steps/k/pruned; the row so far is saved beside it
    (steps/k/pruned_row.json), so a resumed run whose fine-tuning was interrupted reloads both."""
    saved = _read_step(step_dir / PRUNED_ROW_JSON)
    if saved is not None and (step_dir / "pruned").is_dir():
        return load_model(step_dir / "pruned").eval(), *saved
    cfg, console, cost0 = run.cfg, run.console, run.cost0
    row: dict[str, Any] = {"step": k}
    if k == 1 and cfg.remove_layers:
        model, row["removed_layers"] = _remove_layers(model, cfg.remove_layers, run.sens_batches, console)
    table = None
    if cfg.target.latency_share is not None and not cfg.ratios:
        table = _latency_table(model, cfg, k, step_dir, run.show)
        if latency0 is None:  # layers removed first: time the unpruned model as the table does
            latency0 = table.base_ms if not cfg.remove_layers else measure_latency(
                run.original, table.seconds, table.threads,
                feat_dim=run.original.config.num_features)["latency_ms_p50"]
        row["latency_ms_table"] = table.base_ms
    step_target = _step_target(run, k, model, table, latency0, row)
    if step_target is not None:
        if cfg.criterion == "learned":  # masks trained with KD: the student itself is pruned
            model = _learned(model, cfg, step_target, run.calib, step_dir, console, table, row)
            keep = {n: list(range(w)) for n, w in _widths(model).items()}
        else:
            keep = _choose(model, cfg, step_target, run.calib, run.sens_batches, step_dir, console,
                           table, row)
            model = prune_model(model, keep).eval()
        if table is not None:  # learned: predicted before blocks closed by depth gates renumber them
            row["latency_ms_predicted"] = (row["learned"]["latency_ms_predicted"] if "learned" in row
                                           else table.predict({n: len(v) for n, v in keep.items()}))
    _save(model, run.frontend, step_dir / "pruned", {"step": "prune", "source": str(run.model_dir)})
    row.update({"macs": model_cost(model, "macs"), "params": model_cost(model, "params"),
                "widths": _widths(model), "dev_loss_pruned": _mean_loss(model, run.sens_batches)})
    if table is not None:
        row["latency_ms_measured"] = measure_latency(model, table.seconds, table.threads,
                                                     feat_dim=model.config.num_features)["latency_ms_p50"]
    console.print(f"step {k}: {row['macs'] / cost0['macs']:.1%} of the MACs, "
                  f"{row['params'] / cost0['params']:.1%} of the params, "
                  f"dev loss {row['dev_loss_pruned']:.3f}"
                  + (f", {row['latency_ms_measured']:.1f} ms (predicted {row['latency_ms_predicted']:.1f}, "
                     f"unpruned {latency0:.1f})" if "latency_ms_predicted" in row else ""),
                  markup=False, highlight=False)
    write_json_atomic(step_dir / PRUNED_ROW_JSON, {"row": row, "latency0": latency0})
    return model, row, latency0


def _step_target(run: _Run, k: int, model: AcousticModel, table: LatencyTable | None,
                 latency0: float | None, row: dict) -> PruneTarget | None:
    """Step ``k``'s target for ``model``: the share of its cost (and time) to remove so that the
    run is at ``(1 - fraction) ** (k / steps)`` of the original; None: nothing to remove."""
    cfg = run.cfg
    changes = {}
    if cfg.target.kind != "latency":
        goal = (1.0 - cfg.target.fraction) ** (k / cfg.steps) * run.cost0[cfg.target.kind]
        changes["fraction"] = 1.0 - goal / model_cost(model, cfg.target.kind)
    if table is not None:
        share = 1.0 - (1.0 - cfg.target.latency_share) ** (k / cfg.steps) * latency0 / table.base_ms
        changes["fraction" if cfg.target.kind == "latency" else "latency_fraction"] = share
    row["fraction_of_current"] = changes.get("fraction")
    if not (cfg.ratios or cfg.remove_below is not None or changes.get("fraction", 0) > 0
            or changes.get("latency_fraction", 0) > 0):
        return None
    return PruneTarget(**{**config_to_dict(cfg.target), **{
        key: max(v, EPS) for key, v in changes.items()}})


def _finetune_step(run: _Run, step_dir: Path, row: dict) -> tuple[AcousticModel, Path]:
    """Fine-tune steps/k/pruned into steps/k/finetuned (resumed from its last checkpoint when a
    killed run left one; a fine-tuning that finished already is only reloaded)."""
    tuned = step_dir / "finetuned"
    if (tuned / TRAINING_NAME).is_file():
        result = read_json(tuned / TRAINING_NAME)
    else:
        resume = (tuned / CHECKPOINTS / LAST).is_dir()
        if not resume and tuned.exists():
            shutil.rmtree(tuned)  # killed before its first checkpoint: start it afresh
        result = _finetune(step_dir / "pruned", run.model_dir, run.data_dir, tuned, run.cfg, run.show,
                           resume)
    model = load_model(tuned).eval()
    row.update({"dev_wer_finetuned": result["dev_wer"], "finetune_seconds": result["train_seconds"],
                "dev_loss_finetuned": _mean_loss(model, run.sens_batches),
                "learned_nothing": result["learned_nothing"]})
    return model, tuned


def _finish_record(record: dict, model: AcousticModel, cost0: dict, latency0: float | None) -> None:
    """Fill ``record["final"]`` (and the unpruned latency) once every step has run."""
    record["final"] = {"macs": model_cost(model, "macs"), "params": model_cost(model, "params"),
                       "macs_ratio": model_cost(model, "macs") / cost0["macs"],
                       "params_ratio": model_cost(model, "params") / cost0["params"],
                       "widths": _widths(model),
                       # the last fine-tuning ended on the all-blank plateau (None: not fine-tuned)
                       "learned_nothing": record["steps"][-1].get("learned_nothing")}
    if latency0 is not None:
        measured = [r["latency_ms_measured"] for r in record["steps"] if "latency_ms_measured" in r]
        record["original"]["latency_ms"] = latency0
        if measured:
            record["final"].update({"latency_ms": measured[-1], "speedup": latency0 / measured[-1]})


def _prune_unstructured(model_dir: Path, data_dir: Path, out_dir: Path, cfg: PruneConfig, show: bool
                        ) -> dict:
    """Zero single weights (step k: ``1 - (1 - sparsity) ** (k / steps)`` of them; with
    ``gradual`` none here, the fine-tuning's schedule does it), fine-tune with the mask kept,
    save compactly; prune.json holds the sparsity per layer, nonzero parameters and bytes."""
    frontend = Frontend.load(model_dir)
    model = load_model(model_dir).eval()
    u = cfg.unstructured
    train, dev = (feature_cuts(data_dir, split, frontend.features, feature_cache_dir(data_dir, frontend.features),
                               show_progress=show) for split in ("train", "dev"))
    run = _SparseRun(cfg, model_dir, data_dir, frontend, train,
                     list(_batches(frontend, dev, cfg.sensitivity_cuts, cfg.calibration_seconds)),
                     Console(stderr=True, quiet=not show), show)
    record: dict[str, Any] = {"source": str(model_dir), "method": "unstructured", "criterion": u.criterion,
                              "config": config_to_dict(cfg), "original": _sparsity_record(model, u, model_dir),
                              "steps": []}
    current_dir = model_dir
    for k in range(1, cfg.steps + 1):
        model, current_dir, row = _sparse_step(run, k, out_dir / STEPS_DIR / str(k), model)
        record["steps"].append(row)
    if u.storage != "fp32":
        last = record["steps"][-1]
        before = last.get("dev_loss_finetuned", last["dev_loss_pruned"])  # the model being stored
        current_dir, model, record["storage"] = _store(model, frontend, current_dir, out_dir, u.storage,
                                                       run.dev_batches, before)
    record["final"] = {**_sparsity_record(model, u, current_dir, layers=True),
                       "learned_nothing": record["steps"][-1].get("learned_nothing")}
    record["final"]["bytes_ratio"] = record["final"]["bytes"] / record["original"]["bytes"]
    _publish(current_dir, out_dir, record)
    return record


@dataclass
class _SparseRun:
    """What every step of an unstructured prune reads."""
    cfg: PruneConfig
    model_dir: Path
    data_dir: Path
    frontend: Frontend
    train: Any  # the training cuts with features (gradient saliency's calibration audio)
    dev_batches: list[dict]
    console: Console
    show: bool


def _sparse_step(run: _SparseRun, k: int, step_dir: Path, model: AcousticModel
                 ) -> tuple[AcousticModel, Path, dict]:
    """Step ``k`` of an unstructured prune: zero this step's share of the weights (none with
    ``gradual``: the fine-tuning's schedule does it), save compactly into steps/k/pruned, then
    fine-tune with the mask kept; returns the model, its folder and the record row."""
    cfg, u = run.cfg, run.cfg.unstructured
    share = 1.0 - (1.0 - u.sparsity) ** (k / cfg.steps)
    row: dict[str, Any] = {"step": k, "sparsity_target": u.sparsity if cfg.gradual else share}
    if not cfg.gradual:
        calib = (list(_batches(run.frontend, run.train, cfg.calibration_cuts, cfg.calibration_seconds))
                 if u.criterion == "gradient" else None)
        sparsify_(model, dataclasses.replace(u, sparsity=share), calib)
        squash_(model)
    current_dir = step_dir / "pruned"
    _save(model, run.frontend, current_dir, {"step": "prune", "source": str(run.model_dir)}, compact=True)
    row.update({"pruned": _sparsity_record(model, u, current_dir),
                "dev_loss_pruned": _mean_loss(model, run.dev_batches)})
    run.console.print(f"step {k}: {row['pruned']['sparsity']:.1%} of the selected weights are zero, "
                      f"dev loss {row['dev_loss_pruned']:.3f}", markup=False, highlight=False)
    if cfg.finetune_epochs > 0:
        tuned = step_dir / "finetuned"
        result = _finetune(current_dir, run.model_dir, run.data_dir, tuned, cfg, run.show)
        current_dir, model = tuned, load_model(tuned).eval()
        row.update({"dev_wer_finetuned": result["dev_wer"], "finetune_seconds": result["train_seconds"],
                    "dev_loss_finetuned": _mean_loss(model, run.dev_batches),
                    "learned_nothing": result["learned_nothing"],
                    "finetuned": _sparsity_record(model, u, current_dir)})
    return model, current_dir, row


def _store(model: AcousticModel, frontend: Frontend, source: Path, out_dir: Path, precision: str,
           dev_batches: list, dev_loss_before: float) -> tuple[Path, AcousticModel, dict[str, Any]]:
    """The final model written again, its weight matrices' values in ``precision`` (fp16, or
    int8 with a scale per row): its folder, the model as stored, and the dev loss it cost
    (``dev_loss_before``: the model's own, already measured)."""
    folder = out_dir / STEPS_DIR / f"stored_{precision}"
    _save(model, frontend, folder, {"step": "store", "source": str(source), "precision": precision},
          compact=True, precision=precision)
    stored = load_model(folder).eval()
    return folder, stored, {"precision": precision, "dev_loss_before": dev_loss_before,
                            "dev_loss": _mean_loss(stored, dev_batches)}


def _sparsity_record(model: AcousticModel, u: UnstructuredConfig, folder: Path, layers: bool = False
                     ) -> dict[str, Any]:
    """Sparsity of the selected weights and overall, nonzero parameters, bytes on disk of
    ``folder``'s weights (with ``layers``: the sparsity of every selected tensor)."""
    report = sparsity_report(model, select_tensors(model, u.include, u.exclude, u.biases))
    out = {"sparsity": report["pruned_sparsity"], "sparsity_overall": report["sparsity"],
           "params": report["params"], "nonzero_params": report["nonzero_params"],
           "bytes": model_bytes(folder)}
    if layers:
        out["layers"] = {n: v["sparsity"] for n, v in report["layers"].items()}
    return out


def _learned(model: AcousticModel, cfg: PruneConfig, target: PruneTarget, calib: list[dict], step_dir: Path,
             console: Console, table: LatencyTable | None, row: dict) -> AcousticModel:
    """Criterion learned: gates trained with KD on the calibration (training) cuts in batches of
    ``learned.batch_seconds``, binarized; the mask-trained student with the other units removed
    (``slimasr.prune.learned``)."""
    def log(state: Any) -> None:
        console.print(f"mask step {state.step}: expected {state.curves['expected_ratio'][-1]:.1%} "
                      f"of the {target.kind} (target {state.curves['target_ratio'][-1]:.1%})",
                      markup=False, highlight=False)
    def meet(plan: Any) -> dict[str, list[int]]:  # the binarized gates, timed like every latency plan
        return _meet_latency(model, target, table, lambda t: plan(t.latency_fraction), row, console)
    return learned_prune(model, cfg.learned, target.kind, target.fraction, calib, step_dir, row, log,
                        cfg.seed, table, target.latency_fraction, meet if table is not None else None)


def _choose(model: AcousticModel, cfg: PruneConfig, target: PruneTarget, calib: list[dict],
            sens_batches: list[dict], step_dir: Path, console: Console,
            table: LatencyTable | None = None, row: dict | None = None) -> dict[str, list[int]]:
    """Keep-lists for one step with the configured criterion (``table``: latency targets; the
    attempts of the measured latency check go into ``row``)."""
    if cfg.remove_below is not None:
        scores = magnitude_scores(model, p=2) if cfg.remove_by == "group_norm" else norm_scale_scores(model)
        return weak_units(model, scores, cfg.remove_below)
    scores = _scores(model, cfg, calib)
    if cfg.ratios:
        return plan_from_ratios(model, scores, cfg.ratios, target.round_to)
    if cfg.criterion == "sensitivity":
        scan = sensitivity_scan(model, lambda m: _mean_loss(m, sens_batches), scores=scores,
                                ratios=tuple(cfg.sensitivity_ratios), show_progress=console.quiet is False)
        step_dir.mkdir(parents=True, exist_ok=True)
        save_scan(scan, step_dir / "sensitivity.json")
        plot_sensitivity(scan, step_dir / "sensitivity.png")

        def planned(t: PruneTarget) -> dict[str, list[int]]:
            return plan_from_ratios(model, scores, ratios_from_scan(model, scan, t, table), t.round_to)
    else:
        def planned(t: PruneTarget) -> dict[str, list[int]]:
            return plan(model, scores, t, table)
    if table is None:
        return planned(target)
    return _meet_latency(model, target, table, planned, row if row is not None else {}, console)


def _meet_latency(model: AcousticModel, target: PruneTarget, table: LatencyTable, planned: Any,
                  row: dict, console: Console) -> dict[str, list[int]]:
    """Plan with the table, then time the pruned model against ``model`` (alternating); while it
    misses the latency goal by more than ``LATENCY_TOLERANCE`` of the current time, ask the plan
    for proportionally more (the table's sum of single-class savings is optimistic when many
    classes shrink at once), at most ``LATENCY_ATTEMPTS`` plans."""
    goal = 1.0 - target.latency_share
    field_name = "fraction" if target.kind == "latency" else "latency_fraction"
    asked, attempts = target.latency_share, []
    keep = planned(target)
    while True:  # keep[DEPTH]: the blocks learned depth gates kept
        ratio = relative_latency(model, apply_keep(model, keep), table.seconds, table.threads)
        widths = {n: len(v) for n, v in keep.items() if n != DEPTH}
        attempts.append({"asked": asked, "predicted_ratio": table.predict(widths, keep.get(DEPTH)) / table.base_ms,
                         "measured_ratio": ratio})
        console.print(f"latency plan {len(attempts)}: asked {asked:.1%} less time, measured "
                      f"{1.0 - ratio:.1%} less (goal {1.0 - goal:.1%})", markup=False, highlight=False)
        if ratio <= goal + LATENCY_TOLERANCE or len(attempts) == LATENCY_ATTEMPTS:
            row["latency_attempts"] = attempts
            return keep
        asked = min(1.0 - (1.0 - asked) * goal / ratio, MAX_LATENCY_SHARE)
        target = PruneTarget(**{**config_to_dict(target), field_name: asked})
        try:
            keep = planned(target)
        except ValueError as e:  # the constraints allow no more: keep the last plan
            attempts.append({"asked": asked, "unreachable": str(e)})
            row["latency_attempts"] = attempts
            return keep


def _latency_table(model: AcousticModel, cfg: PruneConfig, step: int, step_dir: Path, show: bool
                   ) -> LatencyTable:
    """The given table at the first step (checked against the model), else one measured here;
    saved in the step's folder either way."""
    depth = depth_layers(model) if cfg.criterion == "learned" and cfg.learned.depth else None
    if step == 1 and cfg.latency_table:
        table = LatencyTable.load(cfg.latency_table)
        table.check(model, cfg.latency_table)
        if depth is not None and table.blocks is None:
            raise DataError(cfg.latency_table, "no whole-block timings, which learned.depth needs "
                                               "(a table measured by slimasr prune with learned.depth=true has them)")
    else:
        table = measure_latency_table(model, cfg.target.round_to, cfg.target.max_group_fraction,
                                      threads=cfg.latency_threads, runs=cfg.latency_runs,
                                      show_progress=show, depth=depth)
    step_dir.mkdir(parents=True, exist_ok=True)
    table.save(step_dir / "latency_table.json")
    plot_latency_table(table, step_dir / "latency_table.png")
    return table


def _scores(model: AcousticModel, cfg: PruneConfig, calib: list[dict]) -> dict:
    """One score per unit of every group (sensitivity: ``cfg.sensitivity_order``'s)."""
    criterion = cfg.sensitivity_order if cfg.criterion == "sensitivity" else cfg.criterion
    kw: dict[str, Any] = {"seed": cfg.seed} if criterion == "random" else {}
    batches = calib if criterion in ("taylor", "activation", "apoz") else None
    return score_model(model, criterion, batches, **kw)


def _remove_layers(model: AcousticModel, count: int, batches: list[dict], console: Console
                   ) -> tuple[AcousticModel, list[dict]]:
    """Remove ``count`` whole layers, one at a time, each time the one whose removal gives the
    lowest dev loss (measured); returns the model and, per removal, the original layer index and
    the loss. Layers whose removal breaks the width chain (CRNN/DNN) are not candidates."""
    alive = list(range(layer_stack(model).num_layers))  # original indices of the current layers
    removed = []
    for _ in range(count):
        trials = []
        for i in range(len(alive)):
            try:
                candidate = select_layers(model, [j for j in range(len(alive)) if j != i])
            except ValueError:
                continue  # the first layer, or one whose neighbours' widths do not chain
            trials.append((_mean_loss(candidate, batches), i, candidate))
        if not trials:
            raise ConfigError(f"remove_layers: no further layer can be removed ({len(alive)} left)")
        loss, i, model = min(trials, key=lambda t: (t[0], t[1]))
        removed.append({"layer": alive.pop(i), "dev_loss": loss})
        console.print(f"removed layer {removed[-1]['layer']}: dev loss {loss:.3f}", markup=False,
                      highlight=False)
    return model.eval(), removed


def _finetune(pruned: Path, teacher: Path, data_dir: Path, out: Path, cfg: PruneConfig, show: bool,
              resume: bool = False) -> dict:
    """Fine-tune the pruned model (CTC, or CTC + KD from the unpruned teacher); ``resume``:
    continue from ``out``'s last checkpoint."""
    # T=2 pinned: every pruning result was measured with it (the distill default is now 1)
    loss = (["loss.ctc_weight=0.5", "loss.kd_weight=0.5", "loss.temperature=2.0", *cfg.distill_overrides]
            if cfg.distill
            else ["loss.ctc_weight=1.0", "loss.kd_weight=0.0"])
    overrides = [f"teacher.path={teacher}", "student.init=path", f"student.path={pruned}",
                 f"train.epochs={cfg.finetune_epochs}", f"train.seed={cfg.seed}", *loss,
                 *_sparsity_overrides(cfg), *cfg.finetune_overrides]
    if cfg.num_threads:
        overrides.append(f"train.num_threads={cfg.num_threads}")
    return distill_model({}, data_dir, out, resume=resume, overrides=overrides, show_progress=show)


def _batches(frontend: Frontend, cuts: Any, max_cuts: int, seconds: float) -> Iterator[dict]:
    dataset = AsrDataset(frontend.tokenizer, frontend.normalize, frontend.features, frontend.cmvn,
                         None, train=False)
    subset = cuts.subset(first=max_cuts).to_eager()
    for batch_cuts in SimpleCutSampler(subset, max_duration=seconds):
        batch = dataset[batch_cuts]
        if batch["cut_ids"]:  # empty when every cut's audio was unusable (dropped by the dataset)
            yield batch


@torch.no_grad()
def _mean_loss(model: AcousticModel, batches: list[dict]) -> float:
    """Mean CTC loss per token over ``batches`` (eval mode): the sensitivity metric."""
    model.eval()
    device = next(model.parameters()).device
    losses = [float(compute_loss(model, b, device, "mean", contextlib.nullcontext())) for b in batches]
    return sum(losses) / max(len(losses), 1)


def _widths(model: AcousticModel) -> dict[str, int]:
    return {g.name: g.size for g in prunable_groups(model)}


def _sparsity_overrides(cfg: PruneConfig) -> list[str]:
    """The fine-tuning recipe's sparsity section: the mask kept (unstructured), the gradual
    schedule to the sparsity (``gradual``), the penalty (``regularize``)."""
    out = []
    if cfg.method == "unstructured" and cfg.gradual:
        u = cfg.unstructured
        out += [f"sparsity.gradual.{k}={json.dumps(v)}" for k, v in (
            ("final", u.sparsity), ("scope", u.scope), ("include", u.include), ("exclude", u.exclude),
            ("biases", u.biases))]
    elif cfg.method == "unstructured":
        out.append("sparsity.keep_masks=true")
    if cfg.regularize.kind != "none":
        out += [f"sparsity.regularize.{k}={json.dumps(v)}" for k, v in config_to_dict(cfg.regularize).items()]
    return out


def _save(model: AcousticModel, frontend: Frontend, folder: Path, provenance: dict,
          compact: bool = False, precision: str = "fp32") -> None:
    """Write ``model`` as a model directory and run the reloaded copy; an exact (fp32) copy must
    reproduce the model's output (fp16/int8 are lossy: their cost is measured by the caller)."""
    with atomic_dir(folder) as tmp:
        save_model(model.cpu(), tmp, {**frontend.config_entry(), "tokenizer": {
            "kind": frontend.tokenizer.kind, "vocab_size": frontend.tokenizer.vocab_size},
            "provenance": provenance}, compact=compact, precision=precision)
        frontend.save(tmp)
    reloaded = load_model(folder)  # every written model is reloaded and run
    x = torch.randn(1, 200, frontend.features.num_mel_bins)
    with torch.no_grad():
        a, b = model.eval()(x, torch.tensor([200]))[0], reloaded(x, torch.tensor([200]))[0]
    if not torch.isfinite(b).all() or (precision == "fp32" and (a - b).abs().max() > 1e-4):
        raise RuntimeError(f"{folder}: the saved pruned model does not reproduce the pruned one")


def _publish(source: Path, out_dir: Path, record: dict) -> None:
    """Copy the final model's files into ``out_dir`` and write prune.json last."""
    for name in MODEL_FILES:
        if (source / name).is_file():
            tmp = out_dir / f".{name}.tmp"
            shutil.copyfile(source / name, tmp)
            tmp.replace(out_dir / name)
    config = read_json(out_dir / "config.json")
    config.setdefault("provenance", {}).update({"pruned_from": record["source"],
                                                "criterion": record["criterion"]})
    write_json_atomic(out_dir / "config.json", config)
    write_json_atomic(out_dir / PRUNE_JSON, record)
