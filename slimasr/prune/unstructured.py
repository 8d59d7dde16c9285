"""Unstructured pruning: single weights set to zero through masks, then squashed into the weights.

    masks = sparsify_(model, UnstructuredConfig(criterion="magnitude", sparsity=0.8))  # in place
    ... train or distill as usual: masked weights stay exactly zero ...
    squash_(model)                            # plain tensors holding the zeros, no parametrizations
    sparsity_report(model)                    # per layer and overall: params, nonzero, sparsity

A mask is a ``torch.nn.utils.parametrize`` parametrization ``w -> w * mask`` on the layer's own
tensor, so every forward (training, distillation, evaluation) sees the masked weights and the
code that runs them does not change. The mask's gradient to a masked entry is exactly zero, and
the entry under the mask (the parametrization's ``original``) is set to zero when the mask is
attached: AdamW's decoupled weight decay multiplies it and leaves it at zero (``mask_optimizer_``
also clears the Adam moments of entries masked mid-training, and ``rezero_`` puts zeros back after
any optimizer that might move them).

LSTM/GRU weights (``weight_ih_l0``, ``weight_hh_l0``) are parametrized like any other tensor:
``nn.RNNBase`` checks before every forward whether the tensors behind its weight names changed
(``_weights_have_changed``, made for ``torch.func.functional_call``) and re-reads them into
``_flat_weights``, so the fused kernel always receives the masked weights. ``squash_`` then
restores a plain ``nn.LSTM`` whose ``_flat_weights`` are its parameters again (same speed as the
dense model; bench/sparsity.py measures it).

Which tensors: the weights of Linear, Conv1d/2d and LSTM/GRU layers (RNN input and recurrent
weights) whose names match one of ``include`` and none of ``exclude`` (``fnmatch`` patterns over
state_dict names, e.g. ``rnns.*.weight_hh_l0``, ``blocks.*.attn.*_proj.weight``). Biases only with
``biases``; norms, position biases and scales never.

Criteria: ``magnitude`` |w|; ``gradient`` the saliency |w * dL/dw| summed over calibration
batches (per batch, as the Taylor criterion of ``slimasr.prune.importance`` gathers its
gradients: CTC loss, eval mode). A weight that is already zero (masked, or pruned before) always
goes first, so masks only grow. ``scope: layer`` removes the share ``sparsity`` of every tensor,
``global`` the share of all selected weights together (one threshold). Exactly
``round(sparsity * n)`` entries go; ties go to the earlier position.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from slimasr.config import check_numbers
from slimasr.errors import ConfigError

PRUNED_SCORE = -1.0  # score of a weight that is already zero: below any magnitude or saliency
MASKABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)  # layers whose "weight" (and "bias") can be masked
Masks = dict[str, Tensor]  # plain state_dict name -> bool tensor of its shape (True = kept)
_ORIGINAL = re.compile(r"(^|\.)parametrizations\.([^.]+)\.original$")


@dataclass
class UnstructuredConfig:
    """What ``sparsify_`` removes (plain data; see the module docstring)."""

    criterion: Literal["magnitude", "gradient"] = "magnitude"  # |w|, or |w * dL/dw| on calibration audio
    sparsity: float = 0.8  # share of the selected weights set to zero
    scope: Literal["layer", "global"] = "layer"  # that share of every tensor, or of all together
    include: list[str] = field(default_factory=lambda: ["*"])  # state_dict name patterns pruned
    exclude: list[str] = field(default_factory=list)  # patterns kept dense, e.g. ["head.*"]
    biases: bool = False  # also the biases of the selected layers
    max_batches: int | None = None  # gradient: calibration batches used (None: all given)
    # values of the saved model's weight matrices: fp32 (exact), fp16 or int8 with a scale per row
    # (lossy; the model is scored as stored: slimasr.prune.sparse_io)
    storage: Literal["fp32", "fp16", "int8"] = "fp32"

    def __post_init__(self) -> None:
        check_numbers("unstructured", self, fractions=("sparsity",), positive=("max_batches",))
        if self.sparsity >= 1.0:
            raise ConfigError(f"unstructured.sparsity must be below 1, got {self.sparsity}")
        if not self.include:
            raise ConfigError("unstructured.include: give at least one name pattern ('*': all)")


class WeightMask(nn.Module):
    """The parametrization ``w -> w * mask``; ``mask``: bool buffer of w's shape (True = kept).
    ``order``: the layer's parameter names before any was parametrized (restored by squash)."""

    def __init__(self, mask: Tensor, order: tuple[str, ...]):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))
        self.order = order

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


# ---- the API ---------------------------------------------------------------------------------

def sparsify_(model: nn.Module, config: UnstructuredConfig, batches: Iterable[Mapping] | None = None,
              optimizer: torch.optim.Optimizer | None = None) -> Masks:
    """Mask the lowest-scored weights of ``model`` in place (see the module docstring); returns
    the masks. ``batches``: calibration batches (``AsrDataset``'s), needed by ``gradient``.
    ``optimizer``: clear its moments of the newly masked entries (pruning mid-training)."""
    names = select_tensors(model, config.include, config.exclude, config.biases)
    scores = weight_scores(model, names, config.criterion, batches, config.max_batches)
    masks = compute_masks(scores, config.sparsity, config.scope)
    apply_masks_(model, masks, optimizer)
    return masks


def select_tensors(model: nn.Module, include: Iterable[str] = ("*",), exclude: Iterable[str] = (),
                   biases: bool = False) -> list[str]:
    """Plain names of the maskable tensors matching ``include`` and not ``exclude``, in model order."""
    include, exclude = list(include), list(exclude)
    out = []
    for prefix, module in model.named_modules():
        for attr in _maskable_names(module, biases):
            name = f"{prefix}.{attr}" if prefix else attr
            if _matches(name, include) and not _matches(name, exclude):
                out.append(name)
    return out


def weight_scores(model: nn.Module, names: list[str], criterion: str = "magnitude",
                  batches: Iterable[Mapping] | None = None, max_batches: int | None = None
                  ) -> dict[str, Tensor]:
    """name -> float64 scores of its entries (higher = kept); zero weights score ``PRUNED_SCORE``."""
    if criterion == "magnitude":
        scores = {n: tensor_of(model, n).detach().abs().double().cpu() for n in names}
    elif criterion == "gradient":
        if batches is None:
            raise ValueError("unstructured criterion 'gradient' needs calibration batches")
        scores = gradient_saliency(model, names, batches, max_batches)
    else:
        raise ValueError(f"unknown unstructured criterion {criterion!r} (known: magnitude, gradient)")
    for n, s in scores.items():
        s[tensor_of(model, n).detach().cpu() == 0] = PRUNED_SCORE
    return scores


def gradient_saliency(model: nn.Module, names: list[str], batches: Iterable[Mapping],
                      max_batches: int | None = None) -> dict[str, Tensor]:
    """Per entry, ``sum over batches of |w * dL/dw|`` (float64, CPU), gathered by
    ``slimasr.prune.importance.gradient_products`` (CTC loss, eval mode, cuDNN off)."""
    from slimasr.prune.importance import gradient_products

    wanted = set(names)
    totals = {n: torch.zeros(tensor_of(model, n).shape, dtype=torch.float64) for n in names}
    for products in gradient_products(model, batches, max_batches, "gradient"):
        for key, product in products.items():
            name = plain_name(key)
            if name in wanted:
                totals[name] += product.abs().double().cpu()
    return totals


def compute_masks(scores: Mapping[str, Tensor], sparsity: float, scope: str = "layer") -> Masks:
    """bool masks: the ``round(sparsity * n)`` lowest scores of each tensor (``layer``) or of all
    tensors together (``global``) are False; ties go to the earlier position (flattened, in the
    order of ``scores``)."""
    if scope == "layer":
        return {n: _keep_highest(s.flatten(), round(sparsity * s.numel())).view(s.shape)
                for n, s in scores.items()}
    if scope != "global":
        raise ValueError(f"unknown scope {scope!r} (known: layer, global)")
    if not scores:
        return {}
    flat = torch.cat([s.flatten().double().cpu() for s in scores.values()])
    keep = _keep_highest(flat, round(sparsity * flat.numel()))
    out, start = {}, 0
    for n, s in scores.items():
        out[n] = keep[start:start + s.numel()].view(s.shape)
        start += s.numel()
    return out


def apply_masks_(model: nn.Module, masks: Mapping[str, Tensor],
                 optimizer: torch.optim.Optimizer | None = None) -> None:
    """Attach (or replace) the mask of each named tensor and zero the masked entries underneath;
    with ``optimizer``, also clear their Adam moments."""
    for name, mask in masks.items():
        module, attr = owner(model, name)
        mask = mask.to(device=tensor_of(model, name).device, dtype=torch.bool)
        existing = _mask_module(module, attr)
        if existing is not None:
            existing.mask.copy_(mask)
        else:
            if parametrize.is_parametrized(module, attr):
                raise ValueError(f"{name}: already parametrized by something else than a mask")
            order = _parameter_order(module)
            parametrize.register_parametrization(module, attr, WeightMask(mask, order))
    rezero_(model)
    if optimizer is not None:
        mask_optimizer_(model, optimizer)


def masks_of(model: nn.Module) -> Masks:
    """The masks attached to ``model``: plain name -> bool tensor (True = kept)."""
    out = {}
    for prefix, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr in module.parametrizations:
            mask = _mask_module(module, attr)
            if mask is not None:
                out[f"{prefix}.{attr}" if prefix else attr] = mask.mask
    return out


@torch.no_grad()
def rezero_(model: nn.Module) -> None:
    """Zero every masked entry of the tensors under the masks (after an optimizer step)."""
    for name, mask in masks_of(model).items():
        module, attr = owner(model, name)
        module.parametrizations[attr].original.mul_(mask)


@torch.no_grad()
def mask_optimizer_(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Zero the optimizer's per-entry state tensors (Adam's moments) of masked entries, so that
    no stale momentum moves a weight the mask has just removed."""
    for name, mask in masks_of(model).items():
        module, attr = owner(model, name)
        state = optimizer.state.get(module.parametrizations[attr].original, {})
        for value in state.values():
            if torch.is_tensor(value) and value.shape == mask.shape:
                value.mul_(mask)


def mask_zeros_(model: nn.Module, names: list[str] | None = None) -> Masks:
    """Attach a mask over the exact zeros of each maskable tensor that holds any (a pruned model
    being fine-tuned keeps its zeros); returns those masks."""
    names = select_tensors(model) if names is None else names
    masks = {n: tensor_of(model, n).detach() != 0 for n in names}
    masks = {n: m for n, m in masks.items() if not bool(m.all())}
    apply_masks_(model, masks)
    return masks


def squash_(model: nn.Module) -> nn.Module:
    """Make the masks permanent: every masked tensor becomes a plain parameter holding its
    zeros, the parametrizations go (layers get their own class back, parameters their order),
    and LSTM/GRU layers re-read their weights. Returns ``model``."""
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        masked = [a for a in module.parametrizations if _mask_module(module, a) is not None]
        orders = [_mask_module(module, a).order for a in masked]
        _own_class(module)
        for attr in masked:
            parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
        _restore_order(module, max(orders, key=len))
        if isinstance(module, nn.RNNBase):
            module._init_flat_weights()  # _flat_weights are the parameters again (cuDNN: flattened)
    return model


def sparsity_report(model: nn.Module, names: list[str] | None = None) -> dict:
    """Honest counts: per selected tensor (default: every maskable weight) its ``params``,
    ``nonzero`` and ``sparsity``; over them ``pruned_*``; over the whole model ``params``,
    ``nonzero_params`` and ``sparsity``."""
    names = select_tensors(model) if names is None else names
    layers = {}
    for n in names:
        t = tensor_of(model, n).detach()
        nonzero = int(torch.count_nonzero(t))
        layers[n] = {"params": t.numel(), "nonzero": nonzero, "sparsity": 1.0 - nonzero / max(t.numel(), 1)}
    total = sum(v["params"] for v in layers.values())
    kept = sum(v["nonzero"] for v in layers.values())
    params = list(plain_state(model, parameters_only=True).values())
    all_params = sum(p.numel() for p in params)
    all_nonzero = sum(int(torch.count_nonzero(p)) for p in params)
    return {"params": all_params, "nonzero_params": all_nonzero,
            "sparsity": 1.0 - all_nonzero / max(all_params, 1),
            "pruned_params": total, "pruned_nonzero": kept, "pruned_sparsity": 1.0 - kept / max(total, 1),
            "layers": layers}


# ---- names and tensors -----------------------------------------------------------------------

def plain_name(key: str) -> str:
    """``a.parametrizations.weight.original`` -> ``a.weight`` (other names unchanged)."""
    return _ORIGINAL.sub(r"\1\2", key)


def owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(module, attribute) of the plain tensor name ``name``."""
    prefix, _, attr = name.rpartition(".")
    return (model.get_submodule(prefix) if prefix else model), attr


def tensor_of(model: nn.Module, name: str) -> Tensor:
    """The tensor the forward pass uses under ``name`` (masked when a mask is attached)."""
    module, attr = owner(model, name)
    return getattr(module, attr)


def plain_state(model: nn.Module, parameters_only: bool = False) -> dict[str, Tensor]:
    """Detached tensors under plain names, masks applied (what ``squash_`` would leave)."""
    source = model.named_parameters() if parameters_only else model.state_dict(keep_vars=True).items()
    out = {}
    for key, value in source:
        if ".parametrizations." in f".{key}" and not _ORIGINAL.search(key):
            continue  # a mask buffer
        name = plain_name(key)
        out[name] = (tensor_of(model, name) if name != key else value).detach()
    return out


# ---- helpers ---------------------------------------------------------------------------------

def _maskable_names(module: nn.Module, biases: bool) -> list[str]:
    if isinstance(module, MASKABLE):
        names = ["weight", "bias"] if biases and module.bias is not None else ["weight"]
    elif isinstance(module, nn.RNNBase):
        names = [n for n in module._flat_weights_names if n.startswith("weight_") or biases]
    else:
        return []
    return names


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _keep_highest(scores: Tensor, count: int) -> Tensor:
    """bool (n,): False at the ``count`` lowest scores (stable: ties go to the earlier index)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    keep[torch.argsort(scores, stable=True)[:count]] = False
    return keep


def _mask_module(module: nn.Module, attr: str) -> WeightMask | None:
    """The WeightMask on ``module.attr`` when that is its only parametrization."""
    if not parametrize.is_parametrized(module, attr):
        return None
    chain = module.parametrizations[attr]
    return chain[0] if len(chain) == 1 and isinstance(chain[0], WeightMask) else None


def _parameter_order(module: nn.Module) -> tuple[str, ...]:
    """The module's own parameter names, parametrized ones where they were."""
    names = list(module._parameters)
    if parametrize.is_parametrized(module):
        first = next((m.order for a in module.parametrizations
                      if (m := _mask_module(module, a)) is not None), None)
        return first if first is not None else tuple(names + list(module.parametrizations))
    return tuple(names)


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a class of its own. torch's parametrized class is shared by
    deep copies, and removing a parametrization deletes its property from that class: squashing
    a copy would otherwise break the masked original."""
    cls = type(module)
    body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, body)


def _restore_order(module: nn.Module, order: tuple[str, ...]) -> None:
    params = module._parameters
    ordered = {k: params[k] for k in order if k in params}
    ordered.update({k: v for k, v in params.items() if k not in ordered})
    params.clear()
    params.update(ordered)


__all__ = ["Masks", "UnstructuredConfig", "WeightMask", "apply_masks_", "compute_masks",
           "gradient_saliency", "mask_optimizer_", "mask_zeros_", "masks_of", "owner", "plain_name",
           "plain_state", "rezero_", "select_tensors", "sparsify_", "sparsity_report", "squash_",
           "tensor_of", "weight_scores"]
