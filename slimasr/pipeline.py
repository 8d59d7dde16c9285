"""``slimasr run RECIPE.yaml`` and ``slimasr demo``: the whole pipeline as a list of stages.

A pipeline recipe names an experiment folder and its stages, in order::

    experiment: exp/demo                 # relative to the working directory
    stages:
      - {stage: corpus, name: data, synth: {hours: 1.5}}
      - {stage: train, name: teacher, recipe: train_crnn_teacher.yaml, overrides: [train.max_minutes=6]}
      - {stage: evaluate, models: [teacher], split: test}
      - {stage: report, models: [teacher]}

Each stage writes one folder ``EXPERIMENT/NAME`` (evaluate writes into the model folders, report
writes ``EXPERIMENT/report.*``). ``EXPERIMENT/pipeline.json`` records the settings each finished
stage ran with; a stage whose output is complete and whose settings did not change is skipped, so
a stopped run picks up where it stopped (a half-trained model resumes from its last checkpoint).
Later stages (distill, prune, export) register themselves the same way: see ``STAGES``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from slimasr.config import config_to_dict, from_dict, parse_overrides, merge, read_config_file
from slimasr.errors import ConfigError
from slimasr.io import read_json, write_json_atomic

log = logging.getLogger(__name__)

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"  # bundled recipes (editable install)
STATE_FILE = "pipeline.json"


@dataclass
class CorpusStage:
    name: str = "data"  # output folder under the experiment
    synth: dict | None = None  # SynthConfig fields: synthesize the embedded corpus
    import_format: str | None = None  # or import a corpus: librispeech, timit or jsonl ...
    import_src: str | None = None  # ... from this folder / manifest
    path: str | None = None  # or use an existing data directory as it is


@dataclass
class TrainStage:
    name: str = "teacher"  # model folder under the experiment
    recipe: str = "train_crnn_teacher.yaml"  # training recipe, relative to the pipeline recipe
    overrides: list[str] = field(default_factory=list)  # KEY=VALUE changes to the training recipe
    data: str = "data"  # name of the corpus stage to train on


@dataclass
class DistillStage:
    name: str = "student"  # model folder under the experiment
    teacher: str = "teacher"  # the teacher: a model stage's name, or a model directory
    recipe: str = "distill_crnn_student.yaml"  # distillation recipe, relative to the pipeline recipe
    overrides: list[str] = field(default_factory=list)  # KEY=VALUE changes to the recipe
    data: str = "data"  # name of the corpus stage to train on


@dataclass
class PruneStage:
    name: str = "pruned"  # model folder under the experiment
    model: str = "teacher"  # the model to prune: a model stage's name, or a model directory
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


@dataclass
class ReportStage:
    models: list[str] = field(default_factory=list)  # model stage names, reference first
    name: str = "report"  # writes EXPERIMENT/NAME.{md,json,png}


@dataclass
class Stage:
    kind: str  # "corpus", "train", ...
    spec: Any  # the stage's dataclass
    source: Path | None  # folder of the recipe file (relative paths resolve against it)

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


def load_pipeline(source: str | Path | Mapping, overrides: list[str] | tuple = ()) -> tuple[Path, list[Stage]]:
    """Parse a pipeline recipe into its experiment folder and stages (ConfigError on mistakes)."""
    base = None
    if isinstance(source, (str, Path)):
        path = find_recipe(source)
        data, base = read_config_file(path), path.parent
    else:
        data = dict(source)
    data = merge(data, parse_overrides(overrides))
    unknown = set(data) - {"experiment", "stages"}
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(sorted(unknown))} (known: experiment, stages)")
    if "experiment" not in data or not isinstance(data.get("stages"), list):
        raise ConfigError(f"{source}: a pipeline needs `experiment` and a list of `stages`")
    stages = []
    for i, raw in enumerate(data["stages"]):
        if not isinstance(raw, Mapping) or raw.get("stage") not in STAGES:
            raise ConfigError(f"{source}: stages[{i}]: `stage` must be one of {', '.join(STAGES)}")
        kind = raw["stage"]
        spec = from_dict(STAGES[kind][0], {k: v for k, v in raw.items() if k != "stage"}, f"stages[{i}]")
        stages.append(Stage(kind, spec, base))
    return Path(data["experiment"]), stages


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
                 experiment: str | Path | None = None) -> dict:
    """Run every stage not already complete; return ``{stage key: "ran" | "skipped"}``."""
    exp, stages = load_pipeline(source, overrides)
    exp = Path(experiment) if experiment is not None else exp
    exp.mkdir(parents=True, exist_ok=True)
    state_path = exp / STATE_FILE
    state = read_json(state_path) if state_path.is_file() else {}
    outcome = {}
    for stage in stages:
        settings = config_to_dict(stage.spec)
        _, run, done = STAGES[stage.kind]
        if state.get(stage.key) == settings and done(stage, exp):
            log.info("[%s] complete, skipped", stage.key)
            outcome[stage.key] = "skipped"
            continue
        log.info("[%s] running", stage.key)
        state.pop(stage.key, None)
        write_json_atomic(state_path, state)
        run(stage, exp)
        state[stage.key] = settings
        write_json_atomic(state_path, state)
        outcome[stage.key] = "ran"
    return {"experiment": str(exp), "stages": outcome}


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

        synthesize_corpus(out, build(SynthConfig, spec.synth, "synth"), overwrite=out.exists())
    elif spec.import_format is not None and spec.import_src is not None:
        from slimasr.data import importers

        fn = {"librispeech": importers.import_librispeech, "timit": importers.import_timit,
              "jsonl": importers.import_jsonl}[spec.import_format]
        fn(spec.import_src, out, overwrite=out.exists())
    else:
        raise ConfigError(f"corpus stage {spec.name}: give synth, import_format + import_src, or path")


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
                overrides=spec.overrides)


@register_stage("distill", DistillStage, _model_done)
def _run_distill(stage: Stage, exp: Path) -> None:
    from slimasr.distill import distill_model

    spec: DistillStage = stage.spec
    out = exp / spec.name
    teacher = exp / spec.teacher if (exp / spec.teacher).is_dir() else Path(spec.teacher)
    resume = (out / "checkpoints" / "last").is_dir()
    distill_model(resolve(stage, spec.recipe), _data_of(exp, spec.data), out, resume=resume,
                  overrides=[f"teacher.path={teacher}", *spec.overrides])


@register_stage("prune", PruneStage, lambda stage, exp: (exp / stage.spec.name / "prune.json").is_file())
def _run_prune(stage: Stage, exp: Path) -> None:
    from slimasr.config import from_dict as build
    from slimasr.prune.run import PruneConfig, prune_model_dir

    spec: PruneStage = stage.spec
    out = exp / spec.name
    source = exp / spec.model if (exp / spec.model).is_dir() else Path(spec.model)
    if out.exists():  # an interrupted prune starts over (its steps are short)
        import shutil

        shutil.rmtree(out)
    prune_model_dir(source, _data_of(exp, spec.data), out, build(PruneConfig, spec.config, "config"))


def _eval_done(stage: Stage, exp: Path) -> bool:
    return all((exp / m / "metrics.json").is_file() for m in stage.spec.models)


@register_stage("evaluate", EvaluateStage, _eval_done)
def _run_evaluate(stage: Stage, exp: Path) -> None:
    from slimasr.evaluate.run import EvalConfig, evaluate_model

    spec: EvaluateStage = stage.spec
    data = _data_of(exp, spec.data)
    train_cuts = data / "train_cuts.jsonl.gz"
    decode = dict(spec.decode)
    if spec.lm_order is not None:
        decode.update(method="beam", lm_path=str(_corpus_lm(data, exp, spec.lm_order)))
    cfg = from_dict(EvalConfig, {"decode": decode, "latency_threads": spec.latency_threads,
                                 "max_utterances": spec.max_utterances,
                                 "intent_reference": str(train_cuts) if spec.intents else None,
                                 "lexicon_reference": str(train_cuts)})
    for model in spec.models:
        evaluate_model(exp / model, data / f"{spec.split}_cuts.jsonl.gz", cfg)


def _corpus_lm(data: Path, exp: Path, order: int) -> Path:
    """An ARPA n-gram of the corpus's normalized training text (built once per experiment)."""
    from slimasr.data.manifests import read_split
    from slimasr.decode import build_ngram_lm
    from slimasr.text import normalize_text

    path = exp / f"lm_{order}gram.arpa"
    if not path.is_file():
        texts = (normalize_text(s.text or "") for c in read_split(data, "train") for s in c.supervisions)
        build_ngram_lm(texts, path, order=order)
    return path


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
