"""Build a shipped model folder (slimasr/shipped/NAME/) from a trained model directory.

    slimasr lm --data data/smarthome_v2 --out exp/lm_v2.arpa
    python bench/ship_model.py --model exp/teacher_v2 --data data/smarthome_v2 \
        --lm exp/lm_v2.arpa --name smarthome-crnn [--overwrite]
    python bench/ship_model.py --model exp/causal/cut75_kdd6_bs10_fw_150ep_ends6 --data data/default \
        --lm exp/lm3.arpa --name smarthome-crnn-causal --training bench/ship_causal_student.json

Copies config.json, cmvn.json and tokenizer.json, stores every floating tensor of
model.safetensors as float16 (load_model loads it into the float32 model), and writes
provenance.json: the training command (rebuilt from config.json's provenance and checked against
it; for an averaged model made by a chain of runs, ``--training``'s JSON: its summary, description
and commands, with each run's steps, time and dev WER read from the runs' own folders), the
commit, the corpus (seed, size, fingerprint), the weights' sha256 and parameters, test WER
greedy and with beam + LM for the float32 original and the float16 copy, and the greedy
transcripts of a few test utterances that tests/test_pretrained.py re-synthesizes and
transcribes again. The folder is built beside its place and moved there only when complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from slimasr.config import config_to_dict, from_dict
from slimasr.data.fingerprint import corpus_fingerprint, samples_sha256
from slimasr.data.manifests import read_split
from slimasr.errors import ConfigError, DataError, run_script
from slimasr.evaluate.run import EvalConfig, evaluate_model
from slimasr.io import atomic_dir, file_sha256, read_json, write_json_atomic
from slimasr.shipped import PROVENANCE_NAME, SHIPPED, SHIPPED_DIR

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("config.json", "cmvn.json", "tokenizer.json")  # copied from the model directory as they are
WEIGHTS = "model.safetensors"
RECIPE = "recipes/train_crnn_teacher.yaml"  # the recipe the command is rebuilt from
NUM_RECORDED = 5  # test utterances whose greedy transcripts are recorded
MAX_BYTES = 16 * 1024 * 1024  # the shipped folder's limit


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        chain = read_json(args.training) if args.training else None
        out = ship(args.model, args.data, args.lm, args.name, args.overwrite, chain)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(read_json(out / PROVENANCE_NAME)["results"], indent=2))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="trained model directory")
    ap.add_argument("--data", type=Path, required=True, help="the data directory it was trained on")
    ap.add_argument("--lm", type=Path, required=True, help="ARPA LM for beam search (slimasr lm)")
    ap.add_argument("--name", required=True, help=f"shipped name, one of {', '.join(SHIPPED)}")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing shipped folder")
    ap.add_argument("--training", type=Path, default=None,
                    help="JSON {summary, description, commands}: how an averaged model made by "
                         "several runs was made, instead of one rebuilt train command")
    return ap.parse_args(argv)


def ship(model: Path, data: Path, lm: Path, name: str, overwrite: bool,
         chain: dict | None = None) -> Path:
    """Build ``slimasr/shipped/<folder of name>/`` and return it."""
    if name not in SHIPPED:
        raise ConfigError(f"--name {name!r}: not a shipped name (known: {', '.join(SHIPPED)}); "
                          "add it to slimasr.shipped.SHIPPED first")
    out = SHIPPED_DIR / SHIPPED[name]
    if out.exists() and not overwrite:
        raise DataError(out, "already exists (pass --overwrite to replace it)")
    for path in (model / "config.json", model / WEIGHTS, data / "corpus.json", lm):
        if not path.is_file():
            raise DataError(path, "file not found")
    with atomic_dir(out) as tmp:
        for fname in COPIED:
            shutil.copy2(model / fname, tmp / fname)
        save_half(model / WEIGHTS, tmp / WEIGHTS)
        keep_identical(out / WEIGHTS, tmp / WEIGHTS)
        write_json_atomic(tmp / PROVENANCE_NAME, provenance(model, data, lm, name, tmp, chain))
        size = sum(p.stat().st_size for p in tmp.iterdir())
        if size > MAX_BYTES:
            raise DataError(out, f"{size} bytes, over the {MAX_BYTES}-byte limit")
    return out


def keep_identical(old: Path, new: Path) -> None:
    """Put the shipped file's bytes back when its tensors and metadata equal the new ones:
    safetensors writes its metadata map in an order that varies from run to run, and a shipped
    file that changes bytes for nothing would add its 15 MB to the repository's history again."""
    from safetensors import safe_open

    if not old.is_file():
        return
    with safe_open(str(old), framework="pt") as a, safe_open(str(new), framework="pt") as b:
        if a.metadata() != b.metadata() or set(a.keys()) != set(b.keys()):
            return
        if not all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys()):
            return
    shutil.copy2(old, new)


def save_half(src: Path, dst: Path) -> None:
    """``src``'s tensors with every floating one as float16 (integers, e.g. BatchNorm's
    num_batches_tracked, stay as they are), with its metadata."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata()
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(src)).items()}
    save_file(tensors, str(dst), metadata=metadata)
    dst.chmod(0o644)  # package data: readable by everyone (safetensors writes 0600)


def provenance(model: Path, data: Path, lm: Path, name: str, shipped: Path,
               chain: dict | None = None) -> dict:
    """Everything provenance.json records (see the module docstring)."""
    config = read_json(model / "config.json")
    training = training_record(model, config) if chain is None else chain_record(model, config, chain)
    corpus = read_json(data / "corpus.json")
    from slimasr.models import load_model

    loaded = load_model(shipped)  # float16 on disk, float32 in the model
    return {
        "name": name,
        **({"summary": chain["summary"], "description": chain["description"]} if chain else {}),
        "training": training,
        "commit": git_commit(),
        "corpus": corpus_record(data, corpus),
        "weights": {"file": WEIGHTS, "dtype": "float16",
                    "loads_as": str(next(loaded.parameters()).dtype).removeprefix("torch."),
                    "sha256": file_sha256(shipped / WEIGHTS),
                    "params": sum(p.numel() for p in loaded.parameters()),
                    "original_sha256": file_sha256(model / WEIGHTS)},
        "results": wer_results(model, shipped, data, lm),
        "recorded_transcripts": recorded_transcripts(data, corpus, shipped),
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
    }


def training_record(model: Path, config: dict) -> dict:
    """The training command, rebuilt from config.json's provenance and checked against its
    recorded recipe; epochs, steps, time and dev WER from training.json."""
    from slimasr.train.config import load_recipe

    prov = config["provenance"]
    overrides = recipe_overrides(prov["recipe"])
    rebuilt = config_to_dict(load_recipe(ROOT / RECIPE, overrides))
    rebuilt["model"]["preset"] = Path(rebuilt["model"]["preset"]).name
    recorded = json.loads(json.dumps(prov["recipe"]))
    recorded["model"]["preset"] = Path(recorded["model"]["preset"]).name
    if rebuilt != recorded:
        raise DataError(model / "config.json", "its recorded recipe is not the rebuilt command's")
    quoted = " ".join(f"'{o}'" if "[" in o else o for o in overrides)
    training = read_json(model / "training.json")
    return {
        "command": f"slimasr train --config {RECIPE} --data {prov['data_dir']} --out {model} {quoted}",
        "data_dir": prov["data_dir"],
        "epochs": prov["epochs"],
        "steps": prov["steps"],
        "train_seconds": prov["train_seconds"],
        "threads": prov["recipe"]["train"]["num_threads"],
        "device": training.get("device"),
        "best_dev_wer": prov["best_dev_wer"],
        "slimasr_version": prov["slimasr_version"],
        "torch_version": prov["torch_version"],
    }


def chain_record(model: Path, config: dict, chain: dict) -> dict:
    """``chain``'s commands, and for each run folder behind an averaged model (config.json's
    provenance ``averaged``: folders and their ``checkpoints/last``) what its own provenance
    records; the sum of their steps and training time."""
    prov = config["provenance"]
    if prov.get("step") != "average" or not {"summary", "description", "commands"} <= set(chain):
        raise DataError(model / "config.json", "--training describes an averaged model: its provenance "
                        "must say step 'average' and the JSON hold 'summary', 'description' and "
                        "'commands'")
    runs, data_dirs = [], set()
    for source in dict.fromkeys(s.removesuffix("/checkpoints/last") for s in prov["averaged"]):
        run = read_json(Path(source) / "config.json")["provenance"]
        data_dirs.add(run["data_dir"])
        runs.append({"folder": source, "last_epoch": run["epochs"],  # 0-based: the loop's counter
                     **{k: run[k] for k in ("step", "steps", "train_seconds", "best_dev_wer",
                                            "best_epoch", "teacher", "torch_version")},
                     "threads": run["recipe"]["train"]["num_threads"]})
    if len(data_dirs) != 1:
        raise DataError(model / "config.json", f"its runs trained on {len(data_dirs)} corpora")
    return {"commands": chain["commands"], "averaged": prov["averaged"], "runs": runs,
            "data_dir": data_dirs.pop(), "steps": sum(r["steps"] for r in runs),
            "train_seconds": round(sum(r["train_seconds"] for r in runs), 2),
            "slimasr_version": prov["slimasr_version"]}


def recipe_overrides(recipe: dict) -> list[str]:
    """The ``key=value`` overrides that turn RECIPE into ``recipe``: every leaf that differs
    (lists are leaves; the preset's path is not compared)."""
    from slimasr.train.config import load_recipe

    base = flatten(config_to_dict(load_recipe(ROOT / RECIPE)))
    return [f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in flatten(recipe).items()
            if k != "model.preset" and base.get(k, object()) != v]


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def git_commit() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()


def corpus_record(data: Path, corpus: dict) -> dict:
    """Seed, command, size and fingerprint of the corpus the model was trained and tested on."""
    splits = {name: {"utterances": s["utterances"], "hours": s["hours"]}
              for name, s in corpus["splits"].items()}
    from slimasr.data.synth import SynthConfig

    packages = {family: s["packages"] for family, s in corpus["synthesizers"].items()}
    fields = json.loads(json.dumps(asdict(SynthConfig())))  # (a field newer than the corpus is absent)
    default = {k: v for k, v in fields.items() if k in corpus["config"]} == corpus["config"]
    return {"command": f"slimasr corpus synth --out {data} --seed {corpus['seed']}",
            "default_config": default,  # every other SynthConfig field at its default
            "seed": corpus["seed"], "hours": corpus["config"]["hours"], "splits": splits,
            "synthesizer_packages": packages, "fingerprint": corpus_fingerprint(data)}


def wer_results(model: Path, shipped: Path, data: Path, lm: Path) -> dict:
    """Test WER/CER greedy and with beam + LM of the float32 original and the float16 copy
    (each evaluated from a scratch copy, so no metrics land in either folder)."""
    test = data / "test_cuts.jsonl.gz"
    beam = {"decode": {"method": "beam", "lm_path": str(lm)},
            "lexicon_reference": str(data / "train_cuts.jsonl.gz")}
    results = {"test_utterances": None, "lm": lm.name}
    for label, folder in (("fp32", model), ("fp16", shipped)):
        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(scratch) / "model"
            copy.mkdir()
            for fname in (*COPIED, WEIGHTS):
                shutil.copy2(folder / fname, copy / fname)
            greedy = evaluate_model(copy, test, from_dict(EvalConfig, {}), show_progress=False)
            lm_run = evaluate_model(copy, test, from_dict(EvalConfig, beam), show_progress=False)
        results["test_utterances"] = greedy["num_utterances"]
        results[label] = {"wer_greedy": greedy["wer"], "cer_greedy": greedy["cer"],
                          "wer_lm": lm_run["wer"], "cer_lm": lm_run["cer"],
                          "model_bytes": greedy["model_bytes"]}
    results["fp16_minus_fp32"] = {k: results["fp16"][k] - results["fp32"][k]
                                  for k in ("wer_greedy", "wer_lm")}
    return results


def recorded_transcripts(data: Path, corpus: dict, shipped: Path) -> dict:
    """The first NUM_RECORDED eSpeak test utterances heard without a room or a channel effect:
    their full synthesis plans (so a test can render them again), each checked to render the
    corpus's own samples exactly, and the shipped model's greedy transcripts of them."""
    from slimasr.data.synth import SynthConfig, render_utterance
    from slimasr.recognize import Recognizer

    config = SynthConfig(**corpus["config"])
    recognizer = Recognizer(shipped)
    items = []
    for cut in chosen_cuts(data):
        plan = replan(cut, config)
        audio = render_utterance(plan, config)
        stored, _ = sf.read(str(data / cut.recording.sources[0].source), dtype="int16")
        if not np.array_equal(audio, stored):
            raise DataError(data, f"{cut.id} does not render again to its stored samples")
        items.append({"plan": asdict(plan), "num_samples": len(audio),
                      "samples_sha256": samples_sha256(audio / 32768.0),  # exact where it was shipped
                      "reference": cut.supervisions[0].text,
                      "greedy": recognizer.transcribe(audio.astype(np.float32) / 32768.0)})
    return {"synth_config": {"trim_level": config.trim_level, "dither_lsb": config.dither_lsb},
            "how": "slimasr.data.synth.render_utterance(UtterancePlan(**plan), "
                   "SynthConfig(**synth_config)) -> int16 samples; /32768 -> Recognizer.transcribe",
            "utterances": items}


def chosen_cuts(data: Path) -> list:
    """Test cuts spoken by eSpeak with no room and no channel (codec) effect, first by id."""
    cuts = [c for c in read_split(data, "test")
            if c.custom["synthesizer"] == "espeak" and c.custom["room"] == "none"
            and c.custom["channel"] == "none"]
    return sorted(cuts, key=lambda c: c.id)[:NUM_RECORDED]


def replan(cut, config):
    """The cut's UtterancePlan, drawn again from its (seed, split, index) stream, and checked
    against the plan fields the cut records."""
    from slimasr.data import synth
    from slimasr.data.grammar import Utterance

    split, index = cut.id.rsplit("_", 1)
    sup = cut.supervisions[0]
    utterance = Utterance(sup.text, sup.custom["intent"], sup.custom["slots"])
    voices = synth.split_voices(config)[split]
    rng = synth._rng(config.seed, synth._UTTERANCE_STREAM, split, int(index))
    plan = synth._plan_voice(config, split, int(index), utterance, voices, rng)
    recorded = {k: getattr(plan, k) for k in synth._CUT_CUSTOM}
    if recorded != cut.custom:
        raise DataError(data_of(cut), f"{cut.id}: its plan cannot be drawn again")
    return plan


def data_of(cut) -> str:
    return cut.recording.sources[0].source


if __name__ == "__main__":
    run_script(main)
