"""Benchmark: peer structured-pruning tools on slimasr models. What do NVIDIA ModelOpt (FastNAS)
and torchao's structured pruner make of a CRNN and a Conformer, and what does it cost/buy?

The peers live in their own virtual environment (they must not touch the project's):

    python3 -m venv /work/peers_venv
    /work/peers_venv/bin/pip install torch==2.13.0                  # first: the local CPU build
    /work/peers_venv/bin/pip install -c bench/peers_constraints.txt -e .
    /work/peers_venv/bin/pip install -c bench/peers_constraints.txt -r bench/peers_requirements.txt

    /work/peers_venv/bin/python bench/peers.py --model exp/bench_teachers/conformer_teacher \
        --data data/smarthome --target-macs 0.5 --out exp/peers --results bench/results/peers
    /work/peers_venv/bin/python bench/peers.py --random-preset recipes/models/conformer_teacher.yaml \
        --data data/smarthome --out exp/peers          # a randomly initialised model of that shape

For each peer on ``--model``:

- ``modelopt``: ``mtp.prune(mode="fastnas")`` under a FLOPs bound of ``1 - --target-macs`` of the
  original (``--target-macs`` is the share to REMOVE, as in ``slimasr prune``), scored by minus the
  mean CTC loss on ``--score-cuts`` dev cuts. A pruned Conformer is rebuilt as our own
  ``Conformer`` with the widths ModelOpt chose (strict load, outputs checked against ModelOpt's
  module to 1e-5) and saved as an ordinary model directory ``--out/<model>/modelopt``, which
  ``slimasr evaluate``, ``slimasr distill`` and ``slimasr.prune.model_cost`` read as any other.
- ``torchao``: ``torchao.prototype.sparsity.pruner`` (SaliencyPruner, LSTMSaliencyPruner) on the
  layers it has patterns for; its answer is recorded verbatim.

A refusal or failure is recorded verbatim (``status`` refused/error, ``message``), never hidden.
``--results/<model>.json`` holds per peer: status, message, MACs ratio (our counter, 1 s of
audio), params, widths changed, batch-1 latency (3 s audio, 1 thread) against the unpruned
model, and the produced model directory. ``--finetune-epochs N`` fine-tunes a produced model
with our KD recipe (as ``slimasr prune --distill`` does) into ``--out/<model>/<peer>_finetuned``.
ModelOpt's search checkpoint (its sensitivity map) is kept in ``--out/<model>/modelopt_search.pth``
and reused by a rerun with ``--resume-search``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import shutil
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from lhotse.dataset import SimpleCutSampler  # noqa: E402

from slimasr.data.cache import feature_cache_dir, feature_cuts  # noqa: E402
from slimasr.data.dataset import AsrDataset  # noqa: E402
from slimasr.errors import run_script  # noqa: E402
from slimasr.evaluate.cost import example_input, measure_latency  # noqa: E402
from slimasr.frontend import Frontend  # noqa: E402
from slimasr.models import (  # noqa: E402
    AcousticModel,
    Conformer,
    ConformerConfig,
    build_model,
    load_model,
    load_preset,
    save_model,
)
from slimasr.prune import model_cost  # noqa: E402
from slimasr.prune.groups import prunable_groups  # noqa: E402
from slimasr.train.loop import compute_loss  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import test_wer  # noqa: E402

PEERS = ("modelopt", "torchao")
SHIPPED_TEACHER = Path(__file__).resolve().parents[1] / "slimasr" / "shipped" / "smarthome_crnn"
LATENCY_SECONDS = 3.0  # batch-1 latency is measured on this much audio
MATCH_TOLERANCE = 1e-5  # rebuilt model vs the peer's module, max abs difference of log-probs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model_dir = Path(args.model) if args.model else random_model(args.random_preset, Path(args.out), args.seed)
    original = load_model(model_dir).eval()
    batches = dev_batches(model_dir, Path(args.data), args.score_cuts, args.batch_seconds)
    base = measure(original)
    record: dict[str, Any] = {
        "model": str(model_dir), "architecture": original.arch, "target_macs_removed": args.target_macs,
        "score_cuts": args.score_cuts, "original": base, "peers": {},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "processor": platform.processor()}}
    out = Path(args.out) / model_dir.name
    for peer in args.peers:
        print(f"== {peer} on {model_dir.name}", flush=True)
        try:
            result = PEER_RUNNERS[peer](original, model_dir, out, batches, args)
        except Exception as e:  # a peer that crashes is a result too: recorded, the next one runs
            result = {"status": "error", "message": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc(limit=-4)}
        result.update(peer_version(peer))
        if result.get("model_dir"):
            pruned = load_model(result["model_dir"]).eval()
            result.update(compare(measure(pruned), base))
            if args.finetune_epochs:
                result["finetuned"] = finetune(Path(result["model_dir"]), model_dir, Path(args.data),
                                               out / f"{peer}_finetuned", args)
        record["peers"][peer] = result
        print(f"   {result['status']}: {result.get('message', '')[:300]}", flush=True)
    path = Path(args.results) / f"{model_dir.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="slimasr model directory (crnn or conformer)")
    which.add_argument("--random-preset", metavar="YAML",
                       help="instead: a randomly initialised model of this preset (e.g. "
                            "recipes/models/conformer_teacher.yaml) with the shipped teacher's front end")
    p.add_argument("--data", required=True, help="data directory with a dev split (scoring batches)")
    p.add_argument("--target-macs", type=float, default=0.5, help="share of the MACs to REMOVE")
    p.add_argument("--out", required=True, help="produced models go to OUT/<model>/<peer>")
    p.add_argument("--results", default="bench/results/peers", help="folder of <model>.json")
    p.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    p.add_argument("--score-cuts", type=int, default=8, help="dev cuts in ModelOpt's score function")
    p.add_argument("--batch-seconds", type=float, default=60.0, help="audio per scoring batch")
    p.add_argument("--finetune-epochs", type=int, default=0, help="KD fine-tune produced models")
    p.add_argument("--finetune-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra slimasr distill override (e.g. train.max_steps=10); repeatable")
    p.add_argument("--lm", type=Path, default=None, help="ARPA LM: the fine-tuned model's test WER also with beam + LM")
    p.add_argument("--resume-search", action="store_true", help="reuse ModelOpt's search checkpoint")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 0.0 < args.target_macs < 1.0:
        p.error("--target-macs is the share to remove: 0 < value < 1")
    return args


# ---------------------------------------------------------------------------------------------
# Data, score, cost


def random_model(preset: str, out: Path, seed: int) -> Path:
    """``OUT/<preset name>_random``: the preset's model, randomly initialised (``seed``), with the
    shipped teacher's front end (80-dim fbank, character tokenizer, its CMVN)."""
    frontend = Frontend.load(SHIPPED_TEACHER)
    torch.manual_seed(seed)
    arch, cfg = load_preset(preset)
    model = build_model(arch, cfg, vocab_size=frontend.tokenizer.vocab_size)
    target = out / f"{Path(preset).stem}_random"
    if target.exists():
        shutil.rmtree(target)
    save_model(model, target, {**frontend.config_entry(), "provenance": {"step": "random init", "seed": seed,
                                                                         "preset": str(preset)},
                               "tokenizer": {"kind": frontend.tokenizer.kind,
                                             "vocab_size": frontend.tokenizer.vocab_size}})
    frontend.save(target)
    return target


def dev_batches(model_dir: Path, data_dir: Path, max_cuts: int, seconds: float) -> list[dict]:
    """The first ``max_cuts`` dev cuts as ``AsrDataset`` batches (features from the model's own
    front end, cached as ``slimasr prune`` caches them)."""
    frontend = Frontend.load(model_dir)
    cuts = feature_cuts(data_dir, "dev", frontend.features,
                        feature_cache_dir(data_dir, frontend.features), show_progress=False)
    dataset = AsrDataset(frontend.tokenizer, frontend.normalize, frontend.features, frontend.cmvn,
                         None, train=False)
    subset = cuts.subset(first=max_cuts).to_eager()
    batches = [dataset[c] for c in SimpleCutSampler(subset, max_duration=seconds)]
    return [b for b in batches if b["cut_ids"]]


def ctc_score(batches: list[dict]) -> Callable[[torch.nn.Module], float]:
    """Score to maximise: minus the mean CTC loss (per token) over ``batches``, eval mode."""
    @torch.no_grad()
    def score(model: torch.nn.Module) -> float:
        model.eval()
        losses = [float(compute_loss(model, b, torch.device("cpu"), "mean", contextlib.nullcontext()))
                  for b in batches]
        return -sum(losses) / len(losses)
    return score


def model_inputs(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return batch["features"], batch["feature_lens"]


def measure(model: AcousticModel) -> dict[str, Any]:
    """MACs (1 s of audio), parameters, widths and batch-1 latency (3 s, 1 thread)."""
    latency = measure_latency(model, seconds=LATENCY_SECONDS, threads=1)
    return {"macs": model_cost(model, "macs"), "params": model_cost(model, "params"),
            "latency_ms_p50": latency["latency_ms_p50"],
            "widths": {g.name: g.size for g in prunable_groups(model)}}


def compare(cost: dict, base: dict) -> dict:
    """A pruned model's ``measure`` against the original's: ratios, speed-up, widths changed."""
    widths = {k: [base["widths"][k], v] for k, v in cost["widths"].items() if base["widths"].get(k) != v}
    return {**{k: v for k, v in cost.items() if k != "widths"},
            "macs_ratio": cost["macs"] / base["macs"], "params_ratio": cost["params"] / base["params"],
            "speedup": base["latency_ms_p50"] / cost["latency_ms_p50"], "widths_changed": widths}


# ---------------------------------------------------------------------------------------------
# ModelOpt FastNAS


def run_modelopt(original: AcousticModel, model_dir: Path, out: Path, batches: list[dict],
                 args: argparse.Namespace) -> dict:
    """FastNAS under a FLOPs bound; a pruned Conformer comes back as our model directory."""
    import modelopt.torch.prune as mtp  # noqa: PLC0415 (only in the peers' venv)
    from modelopt.torch.opt.conversion import ApplyModeError  # noqa: PLC0415

    checkpoint = out / "modelopt_search.pth"
    out.mkdir(parents=True, exist_ok=True)
    if not args.resume_search:
        checkpoint.unlink(missing_ok=True)
    score = ctc_score(batches)
    model = copy.deepcopy(original)
    bound = f"{100 * (1 - args.target_macs):g}%"
    with warnings.catch_warnings(record=True) as caught:  # its trace report says what it skipped
        warnings.simplefilter("always")
        try:
            pruned, _ = mtp.prune(model, mode="fastnas", constraints={"flops": bound},
                                  dummy_input=example_input(model, 1.0, model.config.num_features),
                                  config={"data_loader": batches, "collect_func": model_inputs,
                                          "score_func": score, "checkpoint": str(checkpoint),
                                          "verbose": False})
        except ApplyModeError as e:  # its refusal: nothing it can configure in this model
            return {"status": "refused", "message": f"{type(e).__name__}: {e}",
                    "flops_bound": bound, "warnings": unique_messages(caught)}
    changed = changed_tensors(original, pruned)
    result = {"flops_bound": bound, "searched_hparams": searched_hparams(checkpoint),
              "tensors_changed": changed, "warnings": unique_messages(caught),
              "dev_score_original": score(original), "dev_score_peer": score(pruned)}
    if not changed:
        return {**result, "status": "unchanged", "message": "ModelOpt returned the model unpruned"}
    if original.arch != "conformer":
        return {**result, "status": "error",
                "message": f"no converter from ModelOpt's pruned {original.arch} to our config"}
    ours = conformer_from_pruned(pruned, original)
    target = out / "modelopt"
    save_like(ours, model_dir, target, {"step": "peer prune", "peer": "modelopt fastnas",
                                        "pruned_from": str(model_dir), "flops_bound": bound})
    return {**result, "status": "pruned", "message": f"FastNAS under flops <= {bound}",
            "model_dir": str(target)}


def unique_messages(caught: list[warnings.WarningMessage]) -> list[str]:
    """The distinct warning texts, first-seen order (ModelOpt repeats some per subnet)."""
    return list(dict.fromkeys(str(w.message).strip() for w in caught))


def searched_hparams(checkpoint: Path) -> list[str]:
    """The hyperparameters FastNAS measured (its search space), from its search checkpoint."""
    if not checkpoint.is_file():
        return []
    return sorted(torch.load(checkpoint, weights_only=True).get("sensitivity_map", {}))


def changed_tensors(original: torch.nn.Module, pruned: torch.nn.Module) -> dict[str, list]:
    """state_dict entries whose shape the peer changed: name -> [original shape, new shape]."""
    before, after = original.state_dict(), pruned.state_dict()
    return {k: [list(before[k].shape), list(v.shape)] for k, v in after.items()
            if k in before and before[k].shape != v.shape}


def conformer_from_pruned(pruned: torch.nn.Module, original: Conformer) -> Conformer:
    """Our ``Conformer`` with the widths read off ``pruned``'s modules and its weights (strict),
    checked to reproduce ``pruned`` on a random input."""
    cfg = original.config
    ffn, heads, conv = [], [], []
    for block in pruned.blocks:
        ffn += [f.up.out_features if f is not None else 0 for f in (block.ffn1, block.ffn2)]
        heads.append(block.attn.q_proj.out_features // cfg.head_dim if block.attn is not None else 0)
        conv.append(block.conv.pw_value.out_features if block.conv is not None else 0)
    fields = {**vars(cfg), "ffn_dim": ffn, "num_heads": heads, "conv_channels": conv,
              "subsampling_channels": [c.out_channels for c in pruned.subsample.convs],
              "d_model": pruned.input_proj.out_features}
    ours = Conformer(ConformerConfig(**fields), original.vocab_size)
    ours.load_state_dict(pruned.state_dict(), strict=True)
    check_same_outputs(pruned, ours.eval())
    return ours


def check_same_outputs(reference: torch.nn.Module, model: torch.nn.Module) -> None:
    x, x_lens = example_input(model, LATENCY_SECONDS, model.config.num_features)
    with torch.no_grad():
        diff = float((reference.eval()(x, x_lens)[0] - model(x, x_lens)[0]).abs().max())
    if diff > MATCH_TOLERANCE:
        raise RuntimeError(f"rebuilt model differs from the peer's by {diff:.3g} (> {MATCH_TOLERANCE})")


def save_like(model: AcousticModel, source_dir: Path, out_dir: Path, provenance: dict) -> None:
    """Save ``model`` as a model directory with ``source_dir``'s front end (features, CMVN,
    tokenizer, normalizer), then reload it and check it reproduces ``model``."""
    frontend = Frontend.load(source_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    save_model(model.cpu(), out_dir, {**frontend.config_entry(), "provenance": provenance,
                                      "tokenizer": {"kind": frontend.tokenizer.kind,
                                                    "vocab_size": frontend.tokenizer.vocab_size}})
    frontend.save(out_dir)
    check_same_outputs(model, load_model(out_dir))


# ---------------------------------------------------------------------------------------------
# torchao structured pruning


def torchao_targets(model: AcousticModel) -> list[tuple[str, str, list[str]]]:
    """(pruner class, root module, tensor FQNs under the root) to try: the layers torchao has
    structured patterns for (Linear, Conv2d, LSTM) where our own pruner removes units. Root ""
    is the whole model; a Conformer's first FFN is also tried alone (it traces on its own), to
    see torchao's pattern matcher on it once the whole-model trace is out of the way."""
    names = dict(model.named_modules())
    if model.arch == "conformer":
        ffns = [n for n in names if n.endswith((".ffn1", ".ffn2"))]
        return [("SaliencyPruner", "", [f"{n}.up.weight" for n in ffns]),
                ("SaliencyPruner", ffns[0], ["up.weight"])]
    convs = [f"subsample.convs.{i}.weight" for i in range(len(model.subsample.convs))]
    lstms = [n for n, m in names.items() if isinstance(m, torch.nn.LSTM)]
    return [("SaliencyPruner", "", convs),
            ("LSTMSaliencyPruner", "", [f"{n}.weight_ih_l0" for n in lstms])]


def run_torchao(original: AcousticModel, model_dir: Path, out: Path, batches: list[dict],
                args: argparse.Namespace) -> dict:
    """Each attempt: prepare -> step (masks on ``--target-macs`` of the rows) -> prune (FX trace,
    pattern match, physical removal). Status: pruned if the whole model came back smaller."""
    from torchao.prototype.sparsity import pruner as ao  # noqa: PLC0415 (only in the peers' venv)

    attempts = []
    for cls_name, root, fqns in torchao_targets(original):
        module = copy.deepcopy(original.get_submodule(root))
        entry: dict[str, Any] = {"pruner": cls_name, "root": root or "(whole model)", "tensors": fqns}
        try:
            sparsifier = getattr(ao, cls_name)({})
            sparsifier.prepare(module, [{"tensor_fqn": f, "sparsity_level": args.target_macs} for f in fqns])
            sparsifier.enable_mask_update = True
            sparsifier.step()
            traced = sparsifier.prune()
            entry.update(status="pruned", message="torchao returned a pruned FX GraphModule",
                         tensors_changed=changed_tensors(original.get_submodule(root), traced))
        except Exception as e:  # the refusal is the result
            entry.update(status="refused", message=f"{type(e).__name__}: {e}", where=our_frame(e))
        attempts.append(entry)
    whole = [a for a in attempts if a["root"] == "(whole model)"]
    head = next((a for a in whole if a["status"] == "pruned"), whole[0])
    return {"status": head["status"], "message": head["message"], "attempts": attempts}


def our_frame(error: BaseException) -> str:
    """file:line of the innermost slimasr frame in ``error``'s traceback (what a peer tripped on)."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "/slimasr/" in f.filename]
    return f"{frames[-1].filename}:{frames[-1].lineno}: {frames[-1].line}" if frames else ""


PEER_RUNNERS: dict[str, Callable[..., dict]] = {"modelopt": run_modelopt, "torchao": run_torchao}


def peer_version(peer: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    package = {"modelopt": "nvidia-modelopt", "torchao": "torchao"}[peer]
    try:
        return {"package": f"{package}=={version(package)}"}
    except PackageNotFoundError:
        return {"package": f"{package} (not installed)"}


# ---------------------------------------------------------------------------------------------
# Fine-tuning with our own tools


def finetune(pruned: Path, teacher: Path, data_dir: Path, out: Path, args: argparse.Namespace) -> dict:
    """KD fine-tune (CTC 0.5 + KD 0.5 at T=2, as ``slimasr prune --distill``) into ``out``;
    returns its directory, dev WER and training time."""
    from slimasr.distill import distill_model  # noqa: PLC0415
    from slimasr.prune.run import PruneConfig  # noqa: PLC0415

    overrides = [f"teacher.path={teacher}", "student.init=path", f"student.path={pruned}",
                 f"train.epochs={args.finetune_epochs}", f"train.seed={args.seed}",
                 "loss.ctc_weight=0.5", "loss.kd_weight=0.5", "loss.temperature=2.0",
                 *PruneConfig().finetune_overrides, "train.num_threads=1", *args.finetune_override]
    result = distill_model({}, data_dir, out, overrides=overrides, show_progress=False, overwrite=True)
    return {"model_dir": str(out), "dev_wer": result["dev_wer"], "train_seconds": result["train_seconds"],
            "learned_nothing": result["learned_nothing"], "overrides": overrides,
            **test_wer(out, data_dir, args.lm)}


if __name__ == "__main__":
    run_script(main)
