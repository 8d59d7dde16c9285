import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from slimasr.evaluate.cost import (
    cost_report,
    count_macs,
    count_nonzero_params,
    count_params,
    macs_per_second_audio,
    measure_latency,
    model_bytes,
    peak_memory_mb,
)

FEAT = 8  # tiny feature dimension for fast tests
SECONDS = 0.5  # 50 frames


class TinyCTC(nn.Module):
    """Conv1d (stride 2) + LSTM + Linear: (x, x_lens) -> (log_probs, lens), like slimasr models."""

    def __init__(
        self, feat: int = FEAT, channels: int = 16, hidden: int = 12, vocab: int = 5, rnn=nn.LSTM
    ):
        super().__init__()
        self.conv = nn.Conv1d(feat, channels, kernel_size=3, stride=2, padding=1)
        self.rnn = rnn(channels, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, vocab)

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (N, T', C)
        h, _ = self.rnn(h)
        return self.out(h).log_softmax(-1), (x_lens + 1) // 2


def test_linear_and_conv_macs_match_hand_formulas():
    linear = nn.Linear(10, 7)
    assert count_macs(linear, torch.randn(3, 10)) == 3 * 10 * 7
    conv = nn.Conv1d(4, 6, kernel_size=3, padding=1)
    assert count_macs(conv, torch.randn(1, 4, 20)) == 20 * 6 * 4 * 3  # out frames x out x in x k
    conv2d = nn.Conv2d(2, 5, kernel_size=3, stride=2)
    assert count_macs(conv2d, torch.randn(1, 2, 9, 9)) == (4 * 4) * 5 * 2 * 9


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("rnn,gates", [(nn.LSTM, 4), (nn.GRU, 3)])
def test_rnn_macs_match_gates_times_input_plus_hidden(rnn, gates, bidirectional):
    inp, hidden, steps = 6, 10, 17
    model = rnn(inp, hidden, batch_first=True, bidirectional=bidirectional)
    directions = 2 if bidirectional else 1
    expected = gates * (inp + hidden) * hidden * steps * directions
    assert count_macs(model, torch.randn(1, steps, inp)) == expected


def test_macs_per_second_of_a_whole_model():
    model = TinyCTC()
    frames, sub = 50, 25  # 0.5 s at 10 ms; the stride-2 conv halves it
    conv = sub * 16 * FEAT * 3
    lstm = 2 * 4 * (16 + 12) * 12 * sub
    linear = sub * 24 * 5
    assert frames == int(SECONDS * 100)
    assert macs_per_second_audio(model, feat_dim=FEAT, seconds=SECONDS) == pytest.approx(
        (conv + lstm + linear) / SECONDS
    )
    assert model.training  # mode restored


def test_param_counts_and_bytes(tmp_path):
    model = TinyCTC()
    expected = sum(p.numel() for p in model.parameters())
    assert count_params(model) == expected
    with torch.no_grad():
        model.out.weight.zero_()
    assert count_nonzero_params(model) == expected - model.out.weight.numel()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    on_disk = (tmp_path / "model.safetensors").stat().st_size
    assert model_bytes(tmp_path) == on_disk == model_bytes(tmp_path / "model.safetensors")
    assert model_bytes(model.state_dict()) == on_disk


def test_latency_keys_and_thread_count_restored():
    model = TinyCTC()
    threads = torch.get_num_threads()
    out = measure_latency(model, seconds=SECONDS, threads=1, warmup=1, runs=3, feat_dim=FEAT)
    assert set(out) == {"latency_ms_p50", "latency_ms_p90", "rtf", "latency_cpu"} and out["latency_cpu"]
    assert 0 < out["latency_ms_p50"] <= out["latency_ms_p90"]
    assert out["rtf"] == pytest.approx(out["latency_ms_p50"] / 1000 / SECONDS)
    assert torch.get_num_threads() == threads


def test_peak_memory_counts_weights_and_live_activations():
    class TwoLayers(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(FEAT, 1000), nn.Linear(1000, 3)

        def forward(self, x, x_lens):
            return self.b(torch.relu(self.a(x))), x_lens

    model = TwoLayers()
    frames = int(SECONDS * 100)
    weights = 4 * sum(p.numel() for p in model.parameters())
    inputs = 4 * frames * FEAT + 8
    activations = 2 * 4 * frames * 1000  # a(x) and relu(a(x)) alive together
    assert peak_memory_mb(model, SECONDS, FEAT) * 2**20 == weights + inputs + activations


def test_cost_report_has_the_design_keys(tmp_path):
    model = TinyCTC(rnn=nn.GRU)
    report = cost_report(model, seconds=SECONDS, feat_dim=FEAT)
    assert set(report) == {
        "params",
        "nonzero_params",
        "macs_per_second_audio",
        "latency_ms_p50",
        "latency_ms_p90",
        "rtf",
        "latency_cpu",
        "model_bytes",
        "peak_memory_mb",
    }
    assert report["params"] == report["nonzero_params"] == count_params(model)
    assert report["model_bytes"] > 4 * report["params"]  # weights plus the safetensors header
    assert all(math.isfinite(v) and v > 0 for k, v in report.items() if k != "latency_cpu")
