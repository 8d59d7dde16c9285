"""int8: onnxruntime dynamic quantization of the fp32 graph.

    quantize_int8("bundle/model.onnx", "bundle/model.int8.onnx", ["MatMul", "LSTM"], per_channel=False)

Weights become int8 (one scale per tensor, or per output channel); activations are quantized on
the fly, per call, so no calibration data is needed. onnxruntime's dynamic quantizer handles
MatMul (every Linear on (N, T, D)), Conv, LSTM (a contrib op, DynamicQuantizeLSTM), Attention and
Gather; GRU and Gemm stay fp32. Which of them to quantize was measured: docs/export.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from slimasr.errors import ConfigError

DYNAMIC_OP_TYPES = ("MatMul", "Conv", "LSTM", "Attention", "Gather")  # what quantize_dynamic handles


def quantize_int8(src: str | Path, dst: str | Path, op_types: Sequence[str], per_channel: bool,
                  keep_head_fp32: bool = False) -> Path:
    """Write ``dst``: ``src`` with the weights of ``op_types`` nodes in int8. ``keep_head_fp32``:
    leave the output layer (the MatMul feeding the log-softmax) in fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    unknown = sorted(set(op_types) - set(DYNAMIC_OP_TYPES))
    if unknown:
        raise ConfigError(f"int8_op_types: {unknown} cannot be quantized dynamically "
                          f"(choose from {', '.join(DYNAMIC_OP_TYPES)})")
    model = onnx.load(str(src))
    exclude = head_nodes(model) if keep_head_fp32 else []
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # its advice to pre-process is for static quantization
    try:
        quantize_dynamic(model, str(dst), op_types_to_quantize=list(op_types), per_channel=per_channel,
                         weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    finally:
        logging.disable(previous)
    return Path(dst)


def head_nodes(model) -> list[str]:
    """Names of the MatMul/Gemm nodes whose output reaches LogSoftmax through Add nodes only."""
    producer = {out: node for node in model.graph.node for out in node.output}
    softmax = [n for n in model.graph.node if n.op_type == "LogSoftmax"]
    found, frontier = [], [n.input[0] for n in softmax]
    while frontier:
        node = producer.get(frontier.pop())
        if node is None:
            continue
        if node.op_type in ("MatMul", "Gemm"):
            found.append(node.name)
        elif node.op_type == "Add":
            frontier.extend(node.input)
    return found
