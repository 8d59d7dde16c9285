"""Training on CUDA with mixed precision. Skipped without a GPU (the CI machine has none); run it
where one is present: ``pytest tests/train/test_cuda.py``. The CPU side of precision (autocast off,
fp32) is checked here on every machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from slimasr.models import load_model
from slimasr.train import load_frontend, train_model
from slimasr.train import loop
from tests.train.helpers import make_corpus, tiny_recipe

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cpu_trains_in_fp32_whatever_is_asked() -> None:
    console = Console(record=True, width=200)
    assert loop._precision("auto", torch.device("cpu"), console) == "fp32"
    assert loop._precision("bf16", torch.device("cpu"), console) == "fp32"
    assert "autocast is off on cpu" in console.export_text()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("cuda") / "data")


@cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_cuda_mixed_precision_learns_and_reloads_on_cpu(corpus: Path, tmp_path: Path, precision: str) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    out = tmp_path / precision
    metrics = train_model(tiny_recipe(lr=1e-2, device="cuda", precision=precision), corpus, out,
                          show_progress=False)
    training = json.loads((out / "training.json").read_text())
    assert training["device"].startswith("cuda") and training["precision"] == precision
    assert metrics["skipped_batches"]["nonfinite_loss"] <= 2  # fp16's first scales may overflow
    history = metrics["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 10
    assert metrics["dev_wer"] < 20.0
    # The saved weights are plain fp32 and give the same output on CPU as on the GPU (fp32 there).
    model = load_model(out).eval()
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    x = torch.randn(2, 150, load_frontend(out).features.num_mel_bins)
    lens = torch.tensor([150, 97])
    with torch.no_grad():
        cpu_out, cpu_lens = model(x, lens)
        gpu_out, gpu_lens = model.cuda()(x.cuda(), lens.cuda())
    assert torch.equal(cpu_lens, gpu_lens.cpu())
    assert torch.allclose(cpu_out, gpu_out.cpu(), atol=1e-3)


@cuda
def test_cuda_fp16_resume_restores_the_grad_scaler(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "resume"
    train_model(tiny_recipe(lr=1e-2, epochs=3, device="cuda", precision="fp16"), corpus, out,
                show_progress=False)
    state = json.loads((out / "checkpoints" / "last" / "state.json").read_text())["loop"]
    assert state["scaler"], "fp16 checkpoints carry the GradScaler state"
    resumed = train_model(tiny_recipe(lr=1e-2, epochs=6, device="cuda", precision="fp16"), corpus, out,
                          resume=True, show_progress=False)
    assert resumed["epochs"] == 6 and [r["epoch"] for r in resumed["history"]] == list(range(6))
