"""Checkpoint averaging: one model whose weights are the element-wise mean of several models'.

    average_models(["exp/s/checkpoints/epoch-0147", ..., "exp/s/checkpoints/epoch-0149"], "exp/s_avg3")

The standard last step of ASR training recipes (ESPnet averages the N best checkpoints, icefall
the last N epochs, NeMo has a script): weights late in training, or at the ends of several
learning-rate cycles, sit around a minimum, and their mean lies nearer its centre than any one of
them, which usually scores better than the best single checkpoint. The models must be one shape
from one run's front end (same architecture and layer sizes, tokenizer, features, CMVN); every
floating-point tensor is averaged, BatchNorm's running statistics included (as ESPnet does),
integer buffers (BatchNorm's step counter) come from the last model. Training keeps the last N
epochs' weights as model folders with ``train.keep_epochs=N``; a run's training checkpoint
(``RUN/checkpoints/last``: the weights at the run's end, where the model folder holds the best
epoch's) is read with the run's config and front end. The sources are only read; the output is a
model folder like any other, its provenance naming the sources.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from safetensors.torch import load_file

from slimasr import __version__
from slimasr.errors import ConfigError, DataError
from slimasr.frontend import Frontend
from slimasr.io import check_output_dir, clear_output_dir, output_lock
from slimasr.models import build_model, load_model, save_model
from slimasr.models.common import AcousticModel
from slimasr.models.io import CONFIG_NAME, RESERVED_KEYS, WEIGHTS_NAME, plain_state_dict, read_model_config
from slimasr.train.loop import check_reload

SAME_MODEL_KEYS = ("architecture", "vocab_size", "model")  # config.json: one shape
CHECKPOINT_STATE = "state.json"  # marks a training checkpoint (RUN/checkpoints/last)
WRAPPER_PREFIX = "student."  # a distillation checkpoint holds the student under this name


def average_state_dicts(states: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors (summed in float64, cast back); any other
    tensor (an integer step counter) from the last state. All states must have the same keys.
    ``states`` may be a generator: one state is held at a time besides the running sums."""
    sums: dict[str, torch.Tensor] = {}
    count, last = 0, None
    for state in states:
        for key, value in state.items():
            if value.is_floating_point():
                sums[key] = sums[key] + value.to(torch.float64) if count else value.to(torch.float64)
        count, last = count + 1, state
    if last is None:
        raise ValueError("nothing to average")
    return {key: (sums[key] / count).to(value.dtype) if value.is_floating_point() else value.clone()
            for key, value in last.items()}


def average_models(sources: Sequence[str | Path], out_dir: str | Path, overwrite: bool = False) -> dict:
    """Average the model folders ``sources`` into ``out_dir`` (a model folder with the first
    source's front end and config); returns what was written. One-line DataError when a source is
    unreadable or not the first's shape and front end, or ``out_dir`` holds a model (without
    ``overwrite``) or is a source."""
    sources = [Path(s) for s in sources]
    if len(sources) < 2:
        raise ConfigError(f"average needs two or more model folders, got {len(sources)}")
    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite, inputs=sources)
    described = [_described_by(s) for s in sources]
    config, frontend = _check_alike(described)
    state = average_state_dicts(plain_state_dict(_load_source(s, d)) for s, d in zip(sources, described))
    averaged = build_model(config["architecture"], config["model"], vocab_size=config["vocab_size"])
    averaged.load_state_dict(state)
    extra = {k: v for k, v in config.items() if k not in RESERVED_KEYS}
    extra["provenance"] = {"step": "average", "averaged": [str(s) for s in sources],
                           "slimasr_version": __version__, "first_source": config.get("provenance", {})}
    with output_lock(out_dir, "average"):
        if overwrite:
            clear_output_dir(out_dir)
        frontend.save(out_dir)
        save_model(averaged, out_dir, extra, compact=bool(config.get("sparse", False)))
    x = torch.randn(1, 200, frontend.features.num_mel_bins, generator=torch.Generator().manual_seed(0))
    check_reload(averaged, out_dir, {"features": x, "feature_lens": torch.tensor([200])})
    return {"model_dir": str(out_dir), "averaged": len(sources),
            "params": sum(p.numel() for p in averaged.parameters())}


def _described_by(source: Path) -> Path:
    """The model folder whose config and front end describe ``source``: itself, or for a
    training checkpoint ``RUN/checkpoints/NAME`` the run's folder."""
    if (source / CONFIG_NAME).is_file() or not (source / CHECKPOINT_STATE).is_file():
        return source
    return source.parent.parent


def _load_source(source: Path, described: Path) -> AcousticModel:
    """The model of ``described`` with ``source``'s weights."""
    if described == source:
        return load_model(source)
    config = read_model_config(described)  # the run's shape; its own weights are not needed
    model = build_model(config["architecture"], config["model"], vocab_size=config["vocab_size"])
    try:
        weights = load_file(str(source / WEIGHTS_NAME))
    except (OSError, ValueError) as e:
        raise DataError(source / WEIGHTS_NAME, f"unreadable ({' '.join(str(e).split())[:120]})") from None
    student = {k.removeprefix(WRAPPER_PREFIX): v for k, v in weights.items() if k.startswith(WRAPPER_PREFIX)}
    try:
        model.load_state_dict(student or weights, strict=True)
    except RuntimeError:
        raise DataError(source / WEIGHTS_NAME, f"its weights do not fit {described}'s model "
                                               "(average the run's model folders instead)") from None
    return model


def _check_alike(sources: Sequence[Path]) -> tuple[dict, Frontend]:
    """The first source's config and front end, after checking every other source matches them."""
    first = read_model_config(sources[0])
    frontend = Frontend.load(sources[0])
    for source in dict.fromkeys(s for s in sources[1:] if s != sources[0]):  # a run and its last
        config = read_model_config(source)
        differ = [k for k in SAME_MODEL_KEYS if config.get(k) != first.get(k)]
        if differ:
            verb = "differ" if len(differ) > 1 else "differs"
            raise DataError(source / CONFIG_NAME, f"its {' and '.join(differ)} {verb} from {sources[0]}'s: "
                                                  "only models of one shape can be averaged")
        if (what := _frontend_difference(frontend, Frontend.load(source))) is not None:
            raise DataError(source, f"its {what} differs from {sources[0]}'s: average models of one run")
    return first, frontend


def _frontend_difference(a: Frontend, b: Frontend) -> str | None:
    """Which part of two front ends differs (None: they are the same)."""
    if a.tokenizer.tokens != b.tokenizer.tokens:
        return "tokenizer"
    if a.features != b.features:
        return "feature config"
    if a.normalizer != b.normalizer:
        return "text normalizer"
    if (a.cmvn is None) != (b.cmvn is None) or (a.cmvn is not None and not (
            torch.equal(a.cmvn.mean, b.cmvn.mean) and torch.equal(a.cmvn.std, b.cmvn.std))):
        return "CMVN"
    return None
