"""Where ``evaluate`` writes its results: beside the model file they describe.

    MODEL_DIR/metrics.json, eval_utterances.jsonl, eval_worst.json              a PyTorch model
    BUNDLE/metrics.json, eval_utterances.jsonl, eval_worst.json                 BUNDLE/model.onnx
    BUNDLE/metrics.int8.json, eval_utterances.int8.jsonl, eval_worst.int8.json  BUNDLE/model.int8.onnx

    outputs = outputs_of("exp/student_onnx/model.int8.onnx")   # Outputs(folder, model_file, "int8")
    outputs.metrics                                            # exp/student_onnx/metrics.int8.json

A bundle holds two graphs, so each gets its own files; ``report`` shows a row per evaluated graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slimasr.models.io import WEIGHTS_NAME
from slimasr.runtime.bundle import INT8_FILE, MODEL_FILE, bundle_graph, is_bundle

METRICS_FILE = "metrics.json"
UTTERANCES_FILE = "eval_utterances.jsonl"
WORST_FILE = "eval_worst.json"
INT8_TAG = ".int8"  # metrics.int8.json: the results of a bundle's model.int8.onnx
# Every results file evaluate may leave in a bundle (a new export removes them with the old graphs)
RESULT_NAMES = tuple(f"{stem}{tag}{suffix}" for tag in ("", INT8_TAG) for stem, suffix in
                     (("metrics", ".json"), ("eval_utterances", ".jsonl"), ("eval_worst", ".json")))


@dataclass(frozen=True)
class Outputs:
    """The results files of one evaluated model file."""

    folder: Path  # the model directory or bundle folder (locked while evaluate writes it)
    model_file: Path  # the file hashed into metrics.json's model_sha256
    label: str | None = None  # a bundle graph's "fp32" or "int8"; None for a PyTorch model

    @property
    def metrics(self) -> Path:
        return self.folder / self._tagged(METRICS_FILE)

    @property
    def utterances(self) -> Path:
        return self.folder / self._tagged(UTTERANCES_FILE)

    @property
    def worst(self) -> Path:
        return self.folder / self._tagged(WORST_FILE)

    def _tagged(self, name: str) -> str:
        stem, suffix = name.split(".", 1)
        return f"{stem}{INT8_TAG}.{suffix}" if self.label == "int8" else name


def outputs_of(path: str | Path) -> Outputs:
    """The results files for ``path``: a model directory, a bundle folder (its fp32 graph) or one
    of a bundle's .onnx files."""
    path = Path(path)
    if not is_bundle(path):
        return Outputs(path, path / WEIGHTS_NAME)
    folder, int8 = bundle_graph(path)
    return Outputs(folder, folder / (INT8_FILE if int8 else MODEL_FILE), "int8" if int8 else "fp32")


def bundle_outputs(folder: str | Path) -> list[Outputs]:
    """Both graphs' results files of a bundle folder (fp32 first), whether evaluated or not."""
    return [outputs_of(Path(folder) / name) for name in (MODEL_FILE, INT8_FILE)]
