"""Structured pruning: groups (what couples to what), surgery (slicing), importance criteria,
planning to a MACs / params / measured-latency target, and sensitivity scans. Unstructured
pruning (masks), sparsity schedules, regularizers and compact sparse files.

    groups = prunable_groups(model)                       # list[Group]
    small = prune_model(model, {"rnns.0": [0, 2, 5]})     # new dense model, narrower widths
    student = select_layers(teacher, [0, 2])              # depth pruning
    sparsify_(model, UnstructuredConfig(sparsity=0.8)); squash_(model)   # single weights
    small, removed = remove_weak_units(model)             # units group lasso emptied
"""

from slimasr.prune.groups import (
    ActivationSite,
    Group,
    LayerStack,
    Slice,
    group_by_name,
    layer_stack,
    params_per_unit,
    prunable_groups,
    register_groups,
    register_layer_stack,
)
from slimasr.prune.importance import (
    activation_scores,
    magnitude_scores,
    random_scores,
    score_model,
    taylor_scores,
)
from slimasr.prune.latency import LatencyTable, measure_latency_table, relative_latency
from slimasr.prune.plan import PruneTarget, model_cost, plan, plan_from_ratios
from slimasr.prune.sensitivity import (
    load_scan,
    plot_sensitivity,
    ratios_from_scan,
    save_scan,
    sensitivity_scan,
)
from slimasr.prune.surgery import prune_model, select_layers
from slimasr.prune.unstructured import (
    UnstructuredConfig,
    apply_masks_,
    compute_masks,
    sparsify_,
    sparsity_report,
    squash_,
)
from slimasr.prune.regularize import RegularizeConfig, Regularizer, remove_weak_units
from slimasr.prune.schedule import GradualConfig, SparsityConfig, cubic_sparsity, step_callbacks
from slimasr.prune.sparse_io import load_compact, save_compact

__all__ = [
    "ActivationSite", "Group", "LayerStack", "Slice", "group_by_name", "layer_stack",
    "params_per_unit", "prunable_groups", "prune_model", "register_groups", "register_layer_stack",
    "select_layers",
    # importance criteria, planning, sensitivity
    "LatencyTable", "PruneTarget", "activation_scores", "load_scan", "magnitude_scores", "model_cost", "plan",
    "plan_from_ratios", "plot_sensitivity", "random_scores", "ratios_from_scan", "save_scan",
    "measure_latency_table", "relative_latency", "score_model", "sensitivity_scan", "taylor_scores",
    # unstructured pruning, schedules, regularizers, compact files
    "GradualConfig", "RegularizeConfig", "Regularizer", "SparsityConfig", "UnstructuredConfig",
    "apply_masks_", "compute_masks", "cubic_sparsity", "load_compact", "remove_weak_units",
    "save_compact", "sparsify_", "sparsity_report", "squash_", "step_callbacks",
]
