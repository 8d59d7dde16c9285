"""``slimasr run RECIPE.yaml`` and ``slimasr demo``: the whole pipeline as a list of stages.

A pipeline recipe names an experiment folder and its stages, in order::

    experiment: exp/demo                 # relative to the working directory
    threads: 1                           # torch threads of every stage (null: torch's default)
    jobs: 1                              # stages that share no folder run this many at once
    stages:
      - {stage: corpus, name: data, synth: {hours: 1.5}}
      - {stage: train, name: teacher, recipe: train_crnn_teacher.yaml, overrides: [train.epochs=36]}
      - {stage: evaluate, models: [teacher], split: test}
      - {stage: report, models: [teacher]}

Each stage writes one folder ``EXPERIMENT/NAME`` (evaluate adds its results to the model folders,
report writes ``EXPERIMENT/report.*``). An evaluate stage runs as its corpus LM (an ``lm`` stage),
one scoring stage per model and a ``latency`` stage timing them all afterwards with nothing beside
it (``split_evaluate``). ``EXPERIMENT/pipeline.json`` records the settings each finished stage ran
with; a stage whose output is complete and whose settings did not change is skipped, so
a stopped run picks up where it stopped (a half-trained model resumes from its last checkpoint);
``EXPERIMENT/times.json`` when each stage that ran started and how long it took.
Every stage kind registers itself the same way (see ``STAGES``); the deployment stages (export,
sherpa, stream) live in ``slimasr.pipeline.deploy``. ``threads`` applies to every stage: one torch
thread per process by default, because measured here an LSTM forward with 2 OpenMP threads took
3.8 s while another process kept a core busy, against 0.019 s with 1 thread. ``jobs`` > 1 runs
stages that share no folder side by side, each in a process of its own (``slimasr.pipeline.jobs``).

Names are plain folder names (checked when the recipe is read), each used once and never the name
of a model or corpus the stage reads. A stage writes (and, when it reruns, replaces) only a folder
it created: ``EXPERIMENT/.pipeline-folders.json`` records which stage created which folder, and a
stage whose folder already holds something else stops with a one-line error. The experiment
folder is locked while a pipeline runs (``slimasr.io.output_lock``).

A model stage that ends with a model that learned nothing (its training.json says so: at its
best validation every dev hypothesis was empty or dev WER >= 100%) stops the pipeline there
(``on_learned_nothing: stop``, the default): the stages running beside it are stopped (they
resume on the next run), nothing after it runs, no report is written, and one line says which
model and what to change; the exit status is ``LEARNED_NOTHING_EXIT``. ``on_learned_nothing:
warn`` runs every stage and warns at the end (a smoke test whose tiny models cannot learn).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple

from slimasr.config import config_to_dict, from_dict, parse_overrides, merge, read_config_file
from slimasr.errors import ConfigError, DataError
from slimasr.io import LOCK_NAME, output_lock, read_json, write_json_atomic

log = logging.getLogger(__name__)

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"  # bundled recipes (editable install)
STATE_FILE = "pipeline.json"
MODEL_STAGES = ("model", "train", "distill", "prune")  # stages whose model folder holds a training.json
LEARNED_NOTHING_EXIT = 3  # exit status of `slimasr run` / `demo` when a model learned nothing
FOLDERS_FILE = ".pipeline-folders.json"  # folder name -> key of the stage that created it
STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a plain folder name: no '/', '.', '..'
RESERVED_NAMES = {STATE_FILE, FOLDERS_FILE, LOCK_NAME, "pipeline", "logs", "times.json", "times"}
# report "pipeline" -> pipeline.json; logs, times.json: slimasr.pipeline.jobs
FOLDER_STAGES = ("corpus", "model", "train", "distill", "prune", "export", "sherpa",
                 "stream")  # kinds that write EXPERIMENT/NAME
PIPELINE_KEYS = ("experiment", "threads", "jobs", "on_learned_nothing", "stages")  # top-level keys
ON_LEARNED_NOTHING = ("stop", "warn")  # what a model that learned nothing does to the pipeline
DEFAULT_THREADS = 1  # torch threads per stage (see the module doc)
DEFAULT_JOBS = 1  # stages run at once (slimasr.pipeline.jobs)


@dataclass
class CorpusStage:
    name: str = "data"  # output folder under the experiment
    synth: dict | None = None  # SynthConfig fields: synthesize the embedded corpus
    import_format: str | None = None  # or import a corpus: librispeech, timit or jsonl ...
    import_src: str | None = None  # ... from this folder / manifest
    path: str | None = None  # or use an existing data directory as it is


@dataclass
class ModelStage:
    name: str = "teacher"  # model folder under the experiment (a copy of the shipped model)
    shipped: str = "smarthome-crnn"  # the shipped model's name (slimasr.pretrained)
    data: str = "data"  # name of the corpus stage whose fingerprint is compared with its provenance
    check_corpus: bool = True  # warn in one line when that corpus is not the one it was trained on
    train: dict | None = None  # TrainStage fields: how `--train-teacher` trains it from scratch


@dataclass
class TrainStage:
    name: str = "teacher"  # model folder under the experiment
    recipe: str = "train_crnn_teacher.yaml"  # training recipe, relative to the pipeline recipe
    overrides: list[str] = field(default_factory=list)  # KEY=VALUE changes to the training recipe
    data: str = "data"  # name of the corpus stage to train on


@dataclass
class DistillStage:
    name: str = "student"  # model folder under the experiment
    teacher: str = "teacher"  # the teacher: a model stage's name, a shipped model's, or a folder
    recipe: str = "distill_crnn_student.yaml"  # distillation recipe, relative to the pipeline recipe
    overrides: list[str] = field(default_factory=list)  # KEY=VALUE changes to the recipe
    data: str = "data"  # name of the corpus stage to train on


@dataclass
class PruneStage:
    name: str = "pruned"  # model folder under the experiment
    model: str = "teacher"  # the model to prune: a model stage's name, a shipped model's, or a folder
    config: dict = field(default_factory=dict)  # PruneConfig fields (criterion, target, steps, ...)
    data: str = "data"  # name of the corpus stage (calibration and fine-tuning)


@dataclass
class EvaluateStage:
    models: list[str] = field(default_factory=list)  # model stage names to evaluate
    split: str = "test"  # which split of the corpus
    data: str = "data"  # name of the corpus stage
    decode: dict = field(default_factory=dict)  # DecodeConfig fields (greedy by default)
    latency_threads: int = 1  # torch threads while timing batch-1 latency
    max_utterances: int | None = None  # evaluate only the first N utterances (None: all)
    intents: bool = True  # score intents against the corpus's labelled training sentences
    lm_order: int | None = None  # beam search with an n-gram LM of the corpus's training text
    greedy_too: bool = True  # with lm_order: also decode greedily (the report's "greedy WER %")
    latency: bool = True  # time each model's batch-1 latency: a `latency` stage after the scoring


@dataclass
class LatencyStage:
    models: list[str] = field(default_factory=list)  # evaluated models whose latency to time


@dataclass
class LmStage:
    name: str = "lm_3gram.arpa"  # EXPERIMENT/NAME: an ARPA n-gram of the corpus's training text
    order: int = 3
    data: str = "data"  # name of the corpus stage


@dataclass
class ReportStage:
    models: list[str] = field(default_factory=list)  # model stage names, reference first
    name: str = "report"  # writes EXPERIMENT/NAME.{md,json,png}


@dataclass
class Stage:
    kind: str  # "corpus", "train", ...
    spec: Any  # the stage's dataclass
    source: Path | None  # folder of the recipe file (relative paths resolve against it)
    threads: int | None = DEFAULT_THREADS  # torch threads while it runs (None: leave as it is)

    @property
    def key(self) -> str:
        name = getattr(self.spec, "name", None)
        return f"{self.kind}:{name}" if name else f"{self.kind}:{'+'.join(getattr(self.spec, 'models', []))}"


# stage kind -> (spec dataclass, runner(stage, experiment) -> None, done(stage, experiment) -> bool)
STAGES: dict[str, tuple[type, Callable[[Stage, Path], None], Callable[[Stage, Path], bool]]] = {}


def register_stage(kind: str, spec_cls: type, done: Callable[[Stage, Path], bool]):
    def wrap(run: Callable[[Stage, Path], None]):
        STAGES[kind] = (spec_cls, run, done)
        return run

    return wrap


class Pipeline(NamedTuple):
    experiment: Path  # EXPERIMENT: every stage writes below it
    stages: list[Stage]  # in the recipe's order
    jobs: int = DEFAULT_JOBS  # stages that share no folder run this many at once
    on_learned_nothing: str = "stop"  # one of ON_LEARNED_NOTHING (see the module doc)


def load_pipeline(source: str | Path | Mapping, overrides: list[str] | tuple = (),
                  train_models: bool = False) -> Pipeline:
    """Parse a pipeline recipe into its experiment folder, stages and jobs (ConfigError on mistakes).
    ``train_models``: every model stage with a ``train`` entry becomes that train stage."""
    base = None
    if isinstance(source, (str, Path)):
        path = find_recipe(source)
        data, base = read_config_file(path), path.parent
    else:
        data = dict(source)
    data = merge(data, parse_overrides(overrides))
    unknown = set(data) - set(PIPELINE_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(PIPELINE_KEYS)})")
    if "experiment" not in data or not isinstance(data.get("stages"), list):
        raise ConfigError(f"{source}: a pipeline needs `experiment` and a list of `stages`")
    threads = _threads(data.get("threads", DEFAULT_THREADS), source)
    jobs = data.get("jobs", DEFAULT_JOBS)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"{source}: jobs must be a whole number >= 1, got {jobs!r}")
    on_nothing = data.get("on_learned_nothing", "stop")
    if on_nothing not in ON_LEARNED_NOTHING:
        raise ConfigError(f"{source}: on_learned_nothing must be one of {', '.join(ON_LEARNED_NOTHING)}, "
                          f"got {on_nothing!r}")
    stages = []
    for i, raw in enumerate(data["stages"]):
        if not isinstance(raw, Mapping) or raw.get("stage") not in STAGES:
            raise ConfigError(f"{source}: stages[{i}]: `stage` must be one of {', '.join(STAGES)}")
        kind = raw["stage"]
        spec = from_dict(STAGES[kind][0], {k: v for k, v in raw.items() if k != "stage"}, f"stages[{i}]")
        stages.append(trained_instead(Stage(kind, spec, base, threads), i) if train_models
                      else Stage(kind, spec, base, threads))
    check_stage_names(stages, source if base is not None else "pipeline recipe")
    return Pipeline(Path(data["experiment"]), split_evaluate(stages), jobs, on_nothing)


def _threads(value: Any, source: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{source}: threads must be a whole number >= 1 or null, got {value!r}")
    return value


def trained_instead(stage: Stage, index: int) -> Stage:
    """A model stage with a ``train`` entry as the train stage it describes (same name), so its
    model is trained from scratch; any other stage unchanged."""
    if stage.kind != "model" or stage.spec.train is None:
        return stage
    fields = {"name": stage.spec.name, "data": stage.spec.data, **stage.spec.train}
    spec = from_dict(TrainStage, fields, f"stages[{index}].train")
    return Stage("train", spec, stage.source, stage.threads)


def split_evaluate(stages: list[Stage]) -> list[Stage]:
    """Each evaluate stage as the corpus LM it decodes with (an ``lm`` stage, once per file), one
    scoring stage per model (each may run as soon as its model is ready, beside other stages)
    and, unless ``latency: false``, a ``latency`` stage timing them all after, with nothing
    beside it; any other stage unchanged."""
    from dataclasses import replace

    out, lms = [], set()
    for stage in stages:
        if stage.kind != "evaluate":
            out.append(stage)
            continue
        spec: EvaluateStage = stage.spec
        lm = lm_file(spec)
        if lm is not None and lm not in lms:
            lms.add(lm)
            out.append(Stage("lm", LmStage(lm, spec.lm_order, spec.data), stage.source, stage.threads))
        out += [replace(stage, spec=replace(spec, models=[m], latency=False)) for m in spec.models]
        if spec.latency and spec.models:
            out.append(Stage("latency", LatencyStage(list(spec.models)), stage.source, stage.threads))
    return out


def lm_file(spec: Any) -> str | None:
    """The experiment file of an evaluate stage's corpus LM (None without ``lm_order``)."""
    return f"lm_{spec.lm_order}gram.arpa" if getattr(spec, "lm_order", None) is not None else None


def check_stage_names(stages: list[Stage], where: Any) -> None:
    """Every stage name is a plain folder name inside the experiment, used by one stage only and
    never the name of a model, teacher or corpus that stage reads (ConfigError otherwise)."""
    first: dict[str, int] = {}
    for i, stage in enumerate(stages):
        name = getattr(stage.spec, "name", None)
        if name is None:
            continue
        at = f"{where}: stages[{i}] ({stage.kind})"
        if not isinstance(name, str) or not STAGE_NAME.match(name) or name in RESERVED_NAMES:
            raise ConfigError(f"{at}: name {name!r} must be a plain folder name inside the "
                              "experiment: letters, digits, '_', '.', '-', not starting with '.', "
                              f"not one of {', '.join(sorted(RESERVED_NAMES))}")
        if name in first:
            raise ConfigError(f"{at}: name {name!r} is already used by stages[{first[name]}]")
        if name in reads(stage):
            raise ConfigError(f"{at}: name {name!r} is also a model or corpus this stage reads; "
                              "give its output another name")
        first[name] = i


def reads(stage: Stage) -> set[str]:
    """The experiment folders (and files) a stage reads: its model, teacher, corpus, bundle, the
    models it evaluates (``student_onnx/model.int8.onnx`` reads ``student_onnx``), its LM."""
    spec = stage.spec
    named = [getattr(spec, f, None) for f in ("model", "teacher", "data", "bundle")]
    lm = [lm_file(spec)] if stage.kind == "evaluate" else []
    return {Path(v).parts[0] for v in [*named, *getattr(spec, "models", []), *lm] if isinstance(v, str) and v}


def find_recipe(name: str | Path) -> Path:
    """A recipe path, or the name of a bundled recipe (``demo`` -> recipes/demo.yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (RECIPES_DIR / path, RECIPES_DIR / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{name}: recipe not found")


def run_pipeline(source: str | Path | Mapping, overrides: list[str] | tuple = (),
                 experiment: str | Path | None = None, train_models: bool = False) -> dict:
    """Run every stage not already complete; return ``{stage key: "ran" | "skipped"}``.
    ``train_models``: train the models of model stages from scratch (``load_pipeline``)."""
    from slimasr.pipeline.jobs import run_stages

    exp, stages, jobs, on_nothing = load_pipeline(source, overrides, train_models)
    exp = Path(experiment) if experiment is not None else exp
    stop = (lambda stage: learned_nothing(stage, exp)) if on_nothing == "stop" else None
    with output_lock(exp, "run"):
        outcome, stopped = run_stages(stages, exp, jobs, stop)
    result = {"experiment": str(exp), "stages": outcome}
    if stopped is not None:
        log.error("stopped: %s", _stopped_line(stopped))
        return {**result, "stopped_after": stopped.key, "learned_nothing": [stopped.spec.name],
                "exit_code": LEARNED_NOTHING_EXIT}
    return {**result, **_learned_nothing(stages, exp)}


def learned_nothing(stage: Stage, exp: Path) -> bool:
    """Whether ``stage`` made a model whose training.json says it learned nothing."""
    path = exp / str(getattr(stage.spec, "name", "")) / "training.json"
    return stage.kind in MODEL_STAGES and path.is_file() and bool(read_json(path).get("learned_nothing"))


_MORE_TRAINING = {"prune": "more fine-tuning: finetune_epochs in its config",
                  "distill": "more epochs: train.epochs in its overrides"}


def _stopped_line(stage: Stage) -> str:
    return (f"{stage.spec.name} learned nothing (at its best, every dev hypothesis was empty or dev "
            f"WER >= 100%), so the stages after it did not run and no report was written; give it "
            f"{_MORE_TRAINING.get(stage.kind, 'more epochs: train.epochs')} and run again")


def _learned_nothing(stages: list[Stage], exp: Path) -> dict:
    """``learned_nothing``: the models whose training.json says they learned nothing (ran now or
    before), each named in a warning; with ``exit_code`` LEARNED_NOTHING_EXIT when there are any."""
    names = []
    for stage in stages:
        if learned_nothing(stage, exp):
            names.append(stage.spec.name)
            log.warning("warning: %s learned nothing (at its best, every dev hypothesis was empty "
                        "or dev WER >= 100%%): its results measure an untrained model; train "
                        "longer (train.epochs)", stage.spec.name)
    return {"learned_nothing": names, **({"exit_code": LEARNED_NOTHING_EXIT} if names else {})}


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` (None: unchanged) while the block runs."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def output_folder(stage: Stage) -> str | None:
    """The folder (name under the experiment) a stage writes, or None."""
    if stage.kind not in FOLDER_STAGES or getattr(stage.spec, "path", None) is not None:
        return None
    return stage.spec.name


def claim_folder(stage: Stage, exp: Path, finished: bool) -> None:
    """Before a stage runs: its folder must be absent, empty, or one this stage created (recorded
    in FOLDERS_FILE; ``finished``: pipeline.json says it completed here before, which adopts
    experiments from before that record). Records the claim; DataError naming the folder else."""
    name = output_folder(stage)
    if name is None:
        return
    out, path = exp / name, exp / FOLDERS_FILE
    claims = read_json(path) if path.is_file() else {}
    owner = claims.get(name) or (stage.key if finished else None)
    if owner != stage.key and _has_content(out):
        made_by = f"stage {owner}" if owner else "something other than this stage"
        raise DataError(out, f"holds files made by {made_by}, which stage {stage.key} will not "
                             "replace; move the folder away or give the stage another name")
    if claims.get(name) != stage.key:
        write_json_atomic(path, {**claims, name: stage.key})


def _has_content(folder: Path) -> bool:
    if not folder.is_dir():
        return folder.exists()
    return any(p.name != LOCK_NAME for p in folder.iterdir())


def resolve(stage: Stage, path: str) -> Path:
    """A path from a recipe: absolute, relative to the recipe file, or a bundled recipe."""
    p = Path(path)
    if p.is_absolute() or p.is_file():
        return p
    if stage.source is not None and (stage.source / p).is_file():
        return stage.source / p
    return find_recipe(path)


# --------------------------------------------------------------------------- built-in stages


def _corpus_done(stage: Stage, exp: Path) -> bool:
    spec: CorpusStage = stage.spec
    return spec.path is not None or (exp / spec.name / "corpus.json").is_file()


@register_stage("corpus", CorpusStage, _corpus_done)
def _run_corpus(stage: Stage, exp: Path) -> None:
    spec: CorpusStage = stage.spec
    out = exp / spec.name
    if spec.path is not None:
        return
    if spec.synth is not None:
        from slimasr.config import from_dict as build
        from slimasr.data.synth import SynthConfig, synthesize_corpus

        synthesize_corpus(out, build(SynthConfig, spec.synth, "synth"), overwrite=True)  # its own
    elif spec.import_format is not None and spec.import_src is not None:
        from slimasr.data import importers

        fn = {"librispeech": importers.import_librispeech, "timit": importers.import_timit,
              "jsonl": importers.import_jsonl}[spec.import_format]
        fn(spec.import_src, out, overwrite=True)  # the folder is this stage's own (claim_folder)
    else:
        raise ConfigError(f"corpus stage {spec.name}: give synth, import_format + import_src, or path")


def _shipped_done(stage: Stage, exp: Path) -> bool:
    out = exp / stage.spec.name
    return all((out / f).is_file() for f in ("config.json", "model.safetensors", "provenance.json"))


@register_stage("model", ModelStage, _shipped_done)
def _run_model(stage: Stage, exp: Path) -> None:
    """Copy the shipped model into ``EXPERIMENT/NAME`` (evaluate writes its results beside it; the
    package data stays read-only) and compare the corpus with the one it was trained on."""
    from slimasr.shipped import pretrained

    spec: ModelStage = stage.spec
    source, out = pretrained(spec.shipped), exp / spec.name
    tmp = exp / f".{spec.name}.copying"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(out, ignore_errors=True)  # this stage's own folder (claim_folder)
    tmp.rename(out)
    if spec.check_corpus:
        warn_corpus_mismatch(_data_of(exp, spec.data), spec.shipped)


def warn_corpus_mismatch(data: Path, shipped: str) -> str | None:
    """Log (and return) the one-line warning when ``data`` is not the corpus the shipped model's
    provenance.json fingerprints (its test split would not be unseen); None when they agree."""
    from slimasr.data.fingerprint import fingerprint_mismatch
    from slimasr.shipped import provenance

    recorded = provenance(shipped).get("corpus", {}).get("fingerprint", {})
    warning = fingerprint_mismatch(data, recorded)
    if warning is not None:
        log.warning("warning: %s", warning)
    return warning


def _model_done(stage: Stage, exp: Path) -> bool:
    out = exp / stage.spec.name
    return all((out / f).is_file() for f in ("config.json", "model.safetensors", "training.json"))


@register_stage("train", TrainStage, _model_done)
def _run_train(stage: Stage, exp: Path) -> None:
    from slimasr.train import train_model

    spec: TrainStage = stage.spec
    out = exp / spec.name
    resume = (out / "checkpoints" / "last").is_dir()
    train_model(resolve(stage, spec.recipe), _data_of(exp, spec.data), out, resume=resume,
                overrides=spec.overrides, overwrite=True)  # the folder is this stage's own


@register_stage("distill", DistillStage, _model_done)
def _run_distill(stage: Stage, exp: Path) -> None:
    from slimasr.distill import distill_model

    spec: DistillStage = stage.spec
    out = exp / spec.name
    teacher = _model_dir(exp, spec.teacher)
    resume = (out / "checkpoints" / "last").is_dir()
    distill_model(resolve(stage, spec.recipe), _data_of(exp, spec.data), out, resume=resume,
                  overrides=[f"teacher.path={teacher}", *spec.overrides], overwrite=True)


@register_stage("prune", PruneStage, lambda stage, exp: (exp / stage.spec.name / "prune.json").is_file())
def _run_prune(stage: Stage, exp: Path) -> None:
    from slimasr.config import from_dict as build
    from slimasr.prune.run import PruneConfig, prune_model_dir

    spec: PruneStage = stage.spec
    out = exp / spec.name
    source = _model_dir(exp, spec.model)
    # An interrupted prune starts over (its steps are short): overwrite clears only what a run
    # leaves (slimasr.io.OUTPUT_NAMES) in this stage's own folder, never the model it reads.
    prune_model_dir(source, _data_of(exp, spec.data), out, build(PruneConfig, spec.config, "config"),
                    overwrite=True)


def _model_dir(exp: Path, value: str) -> Path:
    """The folder a stage's ``model`` / ``teacher`` names: a model stage of the experiment first,
    then a shipped model (``smarthome-crnn``), then a path."""
    from slimasr.shipped import SHIPPED, pretrained

    if (exp / value).is_dir():
        return exp / value
    return pretrained(value) if value in SHIPPED else Path(value)


def _eval_plan(stage: Stage, exp: Path) -> tuple[Any, Path]:
    """The stage's EvalConfig and the manifest it evaluates."""
    from slimasr.evaluate.run import EvalConfig

    spec: EvaluateStage = stage.spec
    data = _data_of(exp, spec.data)
    train_cuts = data / "train_cuts.jsonl.gz"
    decode = dict(spec.decode)
    if spec.lm_order is not None:
        decode.update(method="beam", lm_path=str(exp / lm_file(spec)))
    cfg = from_dict(EvalConfig, {"decode": decode, "latency_threads": spec.latency_threads,
                                 "latency": spec.latency,
                                 "max_utterances": spec.max_utterances,
                                 "intent_reference": str(train_cuts) if spec.intents else None,
                                 "lexicon_reference": str(train_cuts)})
    return cfg, data / f"{spec.split}_cuts.jsonl.gz"


def _greedy_plan(stage: Stage, exp: Path) -> Any | None:
    """The greedy EvalConfig measured besides beam search (None when there is no beam search)."""
    from dataclasses import replace

    from slimasr.decode import DecodeConfig

    cfg, _ = _eval_plan(stage, exp)
    if stage.spec.lm_order is None or not stage.spec.greedy_too:
        return None
    return replace(cfg, decode=DecodeConfig())


def greedy_path(model: Path) -> Path:
    """Where a model's greedy results go when its metrics.json holds beam search's: beside them
    (``slimasr.evaluate.report.greedy_path``: greedy.json, greedy.int8.json for an int8 graph)."""
    from slimasr.evaluate import report
    from slimasr.evaluate.outputs import outputs_of

    return report.greedy_path(outputs_of(model))


def _greedy_done(model: Path, manifest: Path, cfg: Any) -> bool:
    """Whether ``greedy_path(model)`` holds results of this manifest, settings and weights."""
    from slimasr.evaluate.outputs import outputs_of
    from slimasr.evaluate.run import data_identity
    from slimasr.io import file_sha256

    path = greedy_path(model)
    if not path.is_file() or not manifest.is_file():
        return False
    found, weights = read_json(path), outputs_of(model).model_file
    wanted = {**data_identity(manifest), "model_sha256": file_sha256(weights) if weights.is_file() else None,
              "eval_config": json.loads(json.dumps(config_to_dict(cfg)))}
    return all(found.get(k) == wanted[k] for k in ("data_sha256", "model_sha256", "eval_config"))


def _eval_done(stage: Stage, exp: Path) -> bool:
    """Every model's metrics.json was measured on this manifest with these settings (not on the
    data a user evaluated by hand since, nor with another decoder), and its greedy results too."""
    from slimasr.evaluate.run import evaluated_on

    cfg, manifest = _eval_plan(stage, exp)
    greedy = _greedy_plan(stage, exp)
    return all(evaluated_on(exp / m, manifest, cfg)
               and (greedy is None or _greedy_done(exp / m, manifest, greedy)) for m in stage.spec.models)


@register_stage("evaluate", EvaluateStage, _eval_done)
def _run_evaluate(stage: Stage, exp: Path) -> None:
    from slimasr.evaluate.run import evaluate_model, evaluated_on

    spec: EvaluateStage = stage.spec
    cfg, manifest = _eval_plan(stage, exp)
    greedy = _greedy_plan(stage, exp)
    if spec.lm_order is not None:  # built by the lm stage before it (here when run on its own)
        _corpus_lm(_data_of(exp, spec.data), exp / lm_file(spec), spec.lm_order)
    for model in spec.models:
        also = [] if greedy is None else [(greedy.decode, greedy_path(exp / model))]
        greedy_missing = greedy is not None and not _greedy_done(exp / model, manifest, greedy)
        if greedy_missing or not evaluated_on(exp / model, manifest, cfg):
            evaluate_model(exp / model, manifest, cfg, also=also)  # one pass of the network for both


def _timed_done(stage: Stage, exp: Path) -> bool:
    from slimasr.evaluate.run import is_timed

    return all(is_timed(exp / m) for m in stage.spec.models)


@register_stage("latency", LatencyStage, _timed_done)
def _run_latency(stage: Stage, exp: Path) -> None:
    """Batch-1 latency of every model, timed in turns with nothing else running (the scoring
    before it may have run beside other stages), written into the metrics it left untimed."""
    from slimasr.evaluate.run import time_models

    models = [exp / m for m in stage.spec.models]  # all again, in turns: their ratios hold
    time_models(models, also=[[g] if (g := greedy_path(m)).is_file() else [] for m in models])


def _corpus_lm(data: Path, path: Path, order: int) -> Path:
    """An ARPA n-gram of the corpus's normalized training text at ``path`` (built once)."""
    from slimasr.data.manifests import read_split
    from slimasr.decode import build_ngram_lm
    from slimasr.text import normalize_text

    if not path.is_file():
        texts = (normalize_text(s.text or "") for c in read_split(data, "train") for s in c.supervisions)
        build_ngram_lm(texts, path, order=order)
    return path


@register_stage("lm", LmStage, lambda stage, exp: (exp / stage.spec.name).is_file())
def _run_lm(stage: Stage, exp: Path) -> None:
    _corpus_lm(_data_of(exp, stage.spec.data), exp / stage.spec.name, stage.spec.order)


@register_stage("report", ReportStage, lambda stage, exp: False)
def _run_report(stage: Stage, exp: Path) -> None:
    from slimasr.evaluate.report import collect_rows, markdown_table, write_report

    spec: ReportStage = stage.spec
    rows = collect_rows([exp / m for m in spec.models])
    write_report(rows, exp / spec.name)
    print(markdown_table(rows))


def _data_of(exp: Path, name: str) -> Path:
    state_path = exp / STATE_FILE
    state = read_json(state_path) if state_path.is_file() else {}
    settings = state.get(f"corpus:{name}") or {}
    return Path(settings["path"]) if settings.get("path") else exp / name


from slimasr.pipeline import deploy  # noqa: E402,F401  (registers export, sherpa and stream)
