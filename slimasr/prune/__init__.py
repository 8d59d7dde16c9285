"""Structured pruning: groups (what couples to what), surgery (slicing), and later importance
criteria, schedules and sensitivity scans.

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
from slimasr.prune.surgery import prune_model, select_layers

__all__ = [
    "ActivationSite", "Group", "LayerStack", "Slice", "group_by_name", "layer_stack",
    "params_per_unit", "prunable_groups", "prune_model", "register_groups", "register_layer_stack",
    "select_layers",
]
