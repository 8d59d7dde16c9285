"""Importance criteria: one score per unit for every prunable group (higher = more important).

    scores = score_model(model, "taylor", batches)     # {group name: (size,) float32 tensor, CPU}
    scores = magnitude_scores(model, p=1)

Criteria only score: which tensor slices belong to a unit and where its activation can be seen
come from the family's groups (``slimasr.prune.groups``); slicing is ``slimasr.prune.surgery``'s.

A unit is the union of its group's slices: its own rows (weights, biases, norm parameters) and the
columns of whatever reads it (outgoing weights). Where one tensor is sliced along two dims by the
same group (an RNN's ``weight_hh``: the unit's rows and its recurrent column), the entries on the
intersection are counted once. Buffers (BatchNorm running statistics) are not weights and are
never scored.

- ``magnitude``: the L1 (p=1) or L2 (p=2) norm of all the unit's weights.
- ``taylor``: first-order Taylor estimate of the loss change when the unit is removed,
  ``|sum over the unit's weights of w * dL/dw|`` per calibration batch, summed over batches
  (Molchanov et al. 2019, group form). L is the CTC loss, mean reduction, model in eval mode.
- ``activation`` ("mean_abs"): mean |activation| of the unit over the valid frames of the
  calibration batches, observed at the group's ``ActivationSite``.
- ``apoz``: 1 - APoZ (average percentage of zeros, Hu et al. 2016), so that higher = more
  important. Zeros are only meaningful after a ReLU: a site where no negative activation was ever
  seen is treated as rectified and "zero" means ``a <= 0``; at any other site (LSTM outputs, SiLU,
  attention context) the fallback counts ``|a| < APOZ_EPS`` as zero.
- ``random``: uniform scores from a seeded generator, the baseline every criterion must beat.

How a unit spanning several positions is aggregated: magnitude and Taylor sum over every weight
the unit owns (an LSTM unit: every gate row of both directions, its recurrent columns, its two
columns of the next layer). Activation statistics average over every position of the unit (an LSTM
unit: its forward and backward output features; a head: its ``head_dim`` context features; a conv
channel: every time x frequency cell) and every valid frame.

Valid frames: activation sites are (N, T, D) tensors (time dim 1) or (N, C, T, F) feature maps of a
``Conv2dSubsampling`` (time dim 2). Their valid lengths are found from the tensor's time length:
the model's output frames (``model.output_lengths``), the input frames, or the frames after one of
the subsampling convs. Padded frames are never counted (an RNN's outputs there are garbage).
"""

from __future__ import annotations

import contextlib
import itertools
from collections import defaultdict
from typing import Callable, Iterable, Iterator, Literal, Mapping

import torch
from torch import Tensor, nn

from slimasr.models.common import (
    AcousticModel,
    Conv2dSubsampling,
    conv_out_lengths,
    lengths_to_mask,
    time_padding,
)
from slimasr.prune.groups import ActivationSite, Group, prunable_groups

APOZ_EPS = 1e-3  # at a non-rectified site, |a| below this counts as a zero for APoZ
LOSS_REDUCTION = "mean"  # Taylor's loss: per-utterance CTC / target length, averaged (as training)
CRITERIA = ("magnitude", "taylor", "activation", "apoz", "random")

Scores = dict[str, Tensor]  # group name -> (size,) float32 on CPU


# ---- weight-based criteria ------------------------------------------------------------------

def magnitude_scores(model: AcousticModel, groups: list[Group] | None = None, p: int = 2) -> Scores:
    """L``p`` norm (p = 1 or 2) of every weight each unit owns, its outgoing weights included."""
    if p not in (1, 2):
        raise ValueError(f"magnitude: p must be 1 or 2, got {p}")
    groups = prunable_groups(model) if groups is None else groups
    powered = {k: v.detach().abs().double() ** p for k, v in model.named_parameters()}
    return {g.name: unit_sums(g, powered).pow(1.0 / p).float().cpu() for g in groups}


def taylor_scores(model: AcousticModel, batches: Iterable[Mapping], max_batches: int | None = None
                  ) -> Scores:
    """First-order Taylor importance ``sum over batches of |sum_{w in unit} w * dL/dw|``.

    batches: ``AsrDataset`` batches (features (N, T, F), feature_lens (N,), targets (N, S),
    target_lens (N,)); at most ``max_batches`` of them. The model runs in eval mode (no dropout)
    with gradients on; its mode, ``requires_grad`` flags are restored and every ``.grad`` is left
    None. cuDNN is off while scoring: its RNN backward refuses eval mode.
    """
    groups = prunable_groups(model)
    totals = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    for products in gradient_products(model, batches, max_batches, "taylor"):
        products = {k: v.double() for k, v in products.items()}
        for g in groups:
            totals[g.name] += unit_sums(g, products).abs().cpu()
    return {k: v.float() for k, v in totals.items()}


def gradient_products(model: nn.Module, batches: Iterable[Mapping], max_batches: int | None = None,
                      criterion: str = "taylor") -> Iterator[dict[str, Tensor]]:
    """Per calibration batch, ``{parameter name: w * dL/dw}`` (detached, the parameter's dtype):
    L is the batch's CTC loss (``LOSS_REDUCTION``), the model in eval mode with every parameter
    requiring grad and cuDNN off (see ``taylor_scores``); all restored afterwards. ValueError
    naming ``criterion`` when there is no batch."""
    from slimasr.train.loop import compute_loss  # the loop's recipe imports this package

    params = dict(model.named_parameters())
    device = next(model.parameters()).device
    seen = 0
    with _gradients_on(model), torch.backends.cudnn.flags(enabled=False):
        for batch in _limited(batches, max_batches):
            model.zero_grad(set_to_none=True)
            compute_loss(model, batch, device, LOSS_REDUCTION, contextlib.nullcontext()).backward()
            yield {k: p.detach() * p.grad for k, p in params.items() if p.grad is not None}
            seen += 1
    _require_batches(seen, criterion)


def random_scores(model: AcousticModel, seed: int = 0) -> Scores:
    """Uniform [0, 1) scores from a generator seeded with ``seed`` (groups in forward order)."""
    gen = torch.Generator().manual_seed(seed)
    return {g.name: torch.rand(g.size, generator=gen) for g in prunable_groups(model)}


def unit_sums(group: Group, values: Mapping[str, Tensor]) -> Tensor:
    """(size,) per unit, the sum of ``values[t]`` over the entries of tensor t the unit owns, each
    entry once. ``values``: state_dict key -> tensor of that entry's shape; slices of tensors not in
    ``values`` (buffers, parameters without a gradient) are skipped."""
    by_tensor: dict[str, list] = defaultdict(list)
    for s in group.slices:
        if s.tensor in values:
            by_tensor[s.tensor].append(s)
    total = torch.zeros(group.size, dtype=torch.float64)
    for key, slices in by_tensor.items():
        v = values[key]
        for s in slices:
            total += _per_unit(v, s.dim, s.positions).flatten(1).sum(1).to(total)
        if len(slices) == 2:  # rows and columns of one tensor: their crossing counted twice above
            total -= _crossing(v, slices[0], slices[1]).flatten(1).sum(1).to(total)
        elif len(slices) > 2:
            raise ValueError(f"group {group.name}: {key} is sliced along {len(slices)} dims")
    return total


def _per_unit(v: Tensor, dim: int, positions: Tensor) -> Tensor:
    """(size, m, ...rest): unit j's indices ``positions[j]`` of ``v`` along ``dim``."""
    return v.movedim(dim, 0)[positions.to(v.device)]


def _crossing(v: Tensor, a, b) -> Tensor:
    """(size, m_a, m_b, ...rest): entries owned by unit j through both slices ``a`` and ``b``."""
    w = v.movedim((a.dim, b.dim), (0, 1))
    pa, pb = a.positions.to(v.device), b.positions.to(v.device)
    return w[pa[:, :, None], pb[:, None, :]]


@contextlib.contextmanager
def _gradients_on(model: nn.Module):
    """Eval mode with every parameter requiring grad; restores both and clears ``.grad``."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None
        model.train(was_training)


# ---- activation-based criteria --------------------------------------------------------------

class _SiteStats:
    """Per-feature running sums at one activation site, over valid positions only."""

    def __init__(self) -> None:
        self.abs_sum: Tensor | None = None  # (D,) float64: sum of |a|
        self.nonpositive: Tensor | None = None  # (D,): count of a <= 0
        self.near_zero: Tensor | None = None  # (D,): count of |a| < APOZ_EPS
        self.count = 0  # valid positions per feature
        self.saw_negative = False  # any a < 0: the site is not rectified

    def add(self, flat: Tensor) -> None:
        """flat: (M, D) valid activations, D = features along the site's unit dim."""
        flat = flat.detach().double()
        parts = (flat.abs().sum(0), (flat <= 0).sum(0).double(), (flat.abs() < APOZ_EPS).sum(0).double())
        if self.abs_sum is None:
            self.abs_sum, self.nonpositive, self.near_zero = (p.cpu() for p in parts)
        else:
            self.abs_sum += parts[0].cpu()
            self.nonpositive += parts[1].cpu()
            self.near_zero += parts[2].cpu()
        self.count += flat.shape[0]
        self.saw_negative = self.saw_negative or bool((flat < 0).any())

    def unit_scores(self, positions: Tensor, statistic: str) -> Tensor:
        """(size,) statistic of each unit, averaged over its positions ``positions[j]``."""
        if statistic == "mean_abs":
            per_feature = self.abs_sum / self.count
        else:
            zeros = self.near_zero if self.saw_negative else self.nonpositive
            per_feature = 1.0 - zeros / self.count
        return per_feature[positions].mean(1).float()


def activation_scores(model: AcousticModel, batches: Iterable[Mapping],
                      statistic: Literal["mean_abs", "apoz"] = "mean_abs",
                      max_batches: int | None = None) -> Scores:
    """Mean |activation| ("mean_abs") or 1 - APoZ ("apoz") of each unit over the valid frames of
    the calibration batches (see the module docstring). Runs in eval mode without gradients; the
    mode is restored and the hooks removed."""
    if statistic not in ("mean_abs", "apoz"):
        raise ValueError(f"activation: statistic must be 'mean_abs' or 'apoz', got {statistic!r}")
    groups = prunable_groups(model)
    stats = {g.name: _SiteStats() for g in groups}
    current: dict[str, Tensor | int] = {}  # the batch's x_lens and padded length, read by the hooks
    handles = [_observe(model, g.activation, _recorder(model, g.activation, stats[g.name], current))
               for g in groups]
    was_training = model.training
    device = next(model.parameters()).device
    seen = 0
    try:
        model.eval()
        with torch.no_grad():
            for batch in _limited(batches, max_batches):
                x, x_lens = batch["features"].to(device), batch["feature_lens"].to(device)
                current.update(lens=x_lens, frames=x.shape[1])
                model(x, x_lens)
                seen += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    _require_batches(seen, statistic)
    return {g.name: stats[g.name].unit_scores(g.activation.positions, statistic) for g in groups}


def _observe(model: nn.Module, site: ActivationSite, fn: Callable[[Tensor], None]):
    """Hook calling ``fn(tensor)`` with the site's input or output; returns the handle."""
    module = model.get_submodule(site.module)
    if site.port == "input":
        return module.register_forward_pre_hook(lambda m, args: fn(args[0]))
    return module.register_forward_hook(lambda m, args, out: fn(out[0] if isinstance(out, tuple) else out))


def _recorder(model: AcousticModel, site: ActivationSite, stats: _SiteStats, current: dict
              ) -> Callable[[Tensor], None]:
    def record(a: Tensor) -> None:
        time_dim = 1 if a.dim() == 3 else 2  # (N, T, D) or (N, C, T, F)
        lens = site_lengths(model, site, current["lens"], current["frames"], a.shape[time_dim])
        mask = lengths_to_mask(lens.to(a.device), a.shape[time_dim])  # (N, T_site)
        unit_dim = site.dim % a.dim()
        moved = a.movedim((0, time_dim, unit_dim), (0, 1, -1))  # (N, T_site, ..., D)
        stats.add(moved[mask].reshape(-1, moved.shape[-1]))
    return record


def site_lengths(model: AcousticModel, site: ActivationSite, x_lens: Tensor, frames: int,
                 site_frames: int) -> Tensor:
    """(N,) valid frames at ``site`` whose tensor has ``site_frames`` frames, for an input batch of
    ``frames`` padded frames with lengths ``x_lens``."""
    sub = _enclosing_subsampling(model, site.module)
    if sub is not None:
        lens, padded = x_lens, torch.tensor([frames])
        for k, s in zip(sub.kernels, sub.time_strides):
            pads = time_padding(k, sub.causal)
            lens, padded = conv_out_lengths(lens, k, s, *pads), conv_out_lengths(padded, k, s, *pads)
            if int(padded[0]) == site_frames:
                return lens
    if int(model.output_lengths(torch.tensor([frames]))[0]) == site_frames:
        return model.output_lengths(x_lens)
    if frames == site_frames:
        return x_lens
    raise ValueError(f"activation site {site.module}: cannot tell the valid frames of a tensor with "
                     f"{site_frames} frames (input {frames} frames)")


def _enclosing_subsampling(model: nn.Module, name: str) -> Conv2dSubsampling | None:
    """The ``Conv2dSubsampling`` that module ``name`` lives in, if any."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        module = model.get_submodule(".".join(parts[:i]))
        if isinstance(module, Conv2dSubsampling):
            return module
    return None


# ---- dispatch -------------------------------------------------------------------------------

def score_model(model: AcousticModel, criterion: str, batches: Iterable[Mapping] | None = None,
                **kw) -> Scores:
    """Scores of ``criterion``: "magnitude" (kw ``p``), "taylor", "activation", "apoz" (kw
    ``max_batches``; these three need calibration ``batches``) or "random" (kw ``seed``)."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown importance criterion {criterion!r} (known: {', '.join(CRITERIA)})")
    if criterion == "magnitude":
        return magnitude_scores(model, **kw)
    if criterion == "random":
        return random_scores(model, **kw)
    if batches is None:
        raise ValueError(f"importance criterion {criterion!r} needs calibration batches")
    if criterion == "taylor":
        return taylor_scores(model, batches, **kw)
    return activation_scores(model, batches, "apoz" if criterion == "apoz" else "mean_abs", **kw)


def _limited(batches: Iterable[Mapping], max_batches: int | None) -> Iterable[Mapping]:
    """The first ``max_batches`` batches (all when None), without drawing one more."""
    return itertools.islice(batches, max_batches)


def _require_batches(seen: int, criterion: str) -> None:
    if seen == 0:
        raise ValueError(f"importance criterion {criterion!r}: no calibration batches")


__all__ = ["APOZ_EPS", "CRITERIA", "activation_scores", "gradient_products", "magnitude_scores", "random_scores",
           "score_model", "site_lengths", "taylor_scores", "unit_sums"]
