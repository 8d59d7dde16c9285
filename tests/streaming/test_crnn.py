"""A causal CRNN chunk by chunk (Crnn.forward_chunk) computes forward's log-probs frame for frame;
models with look-ahead are refused, each with its reason."""

from __future__ import annotations

import pytest
import torch

from slimasr.models import build_model
from slimasr.streaming import streaming_problem

CAUSAL = {
    "lstm": {"num_features": 40, "subsampling_channels": [8, 8], "rnn_hidden_sizes": [16, 12],
             "bidirectional": False, "rnn_dropout": 0.0},
    # GRU, kernel 5, x4 in time, no norm, a layer pruned narrower than the next
    "gru x4": {"num_features": 23, "subsampling_channels": [4, 6], "subsampling_kernels": [5, 3],
               "subsampling_strides": [[2, 2], [2, 1]], "subsampling_norm": "none", "rnn_type": "gru",
               "rnn_hidden_sizes": [7, 9], "bidirectional": False},
    "one conv": {"num_features": 16, "subsampling_channels": [3], "subsampling_kernels": [3],
                 "subsampling_strides": [[2, 2]], "rnn_hidden_sizes": [5], "bidirectional": False},
}


def random_causal(config: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("crnn", config, vocab_size=9).eval()
    for module in model.modules():  # BatchNorm statistics away from the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("name", CAUSAL)
def test_chunks_give_forwards_log_probs_frame_for_frame(name):
    model = random_causal(CAUSAL[name])
    x = torch.randn(2, 101, CAUSAL[name]["num_features"])  # 101: the last chunk is always short
    with torch.inference_mode():
        expected, _ = model(x, torch.tensor([101, 101]))
        for chunk in (1, 4, 7, 100):
            frames = chunk * model.subsampling
            state, outs = model.init_stream(batch=2), []
            for start in range(0, 101, frames):
                log_probs, state = model.forward_chunk(x[:, start:start + frames], state)
                outs.append(log_probs)
            got = torch.cat(outs, dim=1)
            assert got.shape == expected.shape
            assert (got - expected).abs().max().item() <= 1e-5, (name, frames)


def test_the_state_is_each_convs_last_frames_and_each_rnns_h_and_c():
    model = random_causal(CAUSAL["lstm"])
    state = model.init_stream(batch=3)
    # conv 0 sees 1 channel of 40 bins, conv 1 8 channels of 20 bins; kernel 3 keeps 2 frames
    assert [tuple(c.shape) for c in state.conv] == [(3, 1, 2, 40), (3, 8, 2, 20)]
    assert [[tuple(t.shape) for t in s] for s in state.rnn] == [[(1, 3, 16)] * 2, [(1, 3, 12)] * 2]
    assert all(not t.any() for t in [*state.conv, *(t for s in state.rnn for t in s)])
    x = torch.randn(3, 8, 40)
    with torch.inference_mode():
        _, after = model.forward_chunk(x, state)
    assert torch.equal(after.conv[0][:, 0], x[:, -2:])  # the last two input frames


@pytest.mark.parametrize(("arch", "config", "reason"), [
    ("crnn", {"bidirectional": True}, "backward recurrent layers read the whole utterance"),
    ("crnn", {"bidirectional": False, "causal": False}, "convolutions look at future frames"),
    ("dnn", {"context_right": 5}, "frame stacking looks 5 frames ahead"),
    ("conformer", {}, "self-attention and convolution modules see the whole utterance"),
])
def test_a_model_with_look_ahead_cannot_stream_and_says_why(arch, config, reason):
    model = build_model(arch, {"num_features": 16, **config}, vocab_size=5)
    assert reason in streaming_problem(model)
    if arch == "crnn":
        with pytest.raises(ValueError, match="this CRNN cannot stream"):
            model.forward_chunk(torch.zeros(1, 4, 16), None)


def test_a_causal_crnn_can_stream():
    assert streaming_problem(random_causal(CAUSAL["lstm"])) is None
