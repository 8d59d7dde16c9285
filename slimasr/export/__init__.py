"""Export to a deployment bundle: ONNX graph (CMVN folded in), parity check, int8, bundle.json.

    result = export_model("exp/teacher", "exp/teacher_bundle", ExportConfig(int8=True))

``slimasr.runtime`` runs the bundle; docs/export.md describes it.
"""

from slimasr.export.graph import ExportWrapper, export_onnx
from slimasr.export.parity import ExportCheckFailed, check_parity, parity_cases
from slimasr.export.quantize import quantize_int8
from slimasr.export.run import ExportConfig, export_model

__all__ = ["ExportCheckFailed", "ExportConfig", "ExportWrapper", "check_parity", "export_model",
           "export_onnx", "parity_cases", "quantize_int8"]
