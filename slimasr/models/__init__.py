"""Acoustic model families (CTC, blank = 0) and the model directory.

    model = build_model("crnn", {"rnn_hidden_sizes": [256, 256]}, vocab_size=30)
    log_probs, out_lens = model(x, x_lens)        # (N, T, F), (N,) -> (N, T', V), (N,)
    save_model(model, "exp/m", extra={...});  model = load_model("exp/m")
"""

from slimasr.models.registry import (  # noqa: I001  (registry first: the families register into it)
    build_model,
    get_config_class,
    list_models,
    load_preset,
    make_config,
    register_model,
)
from slimasr.models.common import AcousticModel
from slimasr.models.dnn import Dnn, DnnConfig
from slimasr.models.crnn import Crnn, CrnnConfig
from slimasr.models.conformer import Conformer, ConformerConfig
from slimasr.models.io import load_model, read_model_config, save_model

__all__ = [
    "AcousticModel", "Conformer", "ConformerConfig", "Crnn", "CrnnConfig", "Dnn", "DnnConfig",
    "build_model", "get_config_class", "list_models", "load_model", "load_preset", "make_config",
    "read_model_config", "register_model", "save_model",
]
