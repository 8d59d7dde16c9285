"""Structured pruning: groups (what couples to what), surgery (slicing), importance criteria,
planning to a MACs / params / measured-latency target, and sensitivity scans.

    groups = prunable_groups(model)                       # list[Group]
    small = prune_model(model, {"rnns.0": [0, 2, 5]})     # new dense model, narrower widths
    student = select_layers(teacher, [0, 2])              # depth pruning
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

__all__ = [
    "ActivationSite", "Group", "LayerStack", "Slice", "group_by_name", "layer_stack",
    "params_per_unit", "prunable_groups", "prune_model", "register_groups", "register_layer_stack",
    "select_layers",
    # importance criteria, planning, sensitivity
    "LatencyTable", "PruneTarget", "activation_scores", "load_scan", "magnitude_scores", "model_cost", "plan",
    "plan_from_ratios", "plot_sensitivity", "random_scores", "ratios_from_scan", "save_scan",
    "measure_latency_table", "relative_latency", "score_model", "sensitivity_scan", "taylor_scores",
]
