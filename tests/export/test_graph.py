"""The ONNX graph of every family, at pruned (uneven) widths: ONNX equals PyTorch on log-probs
within 1e-4 for several lengths, at batch 1 and in a padded batch of 3, with CMVN inside the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slimasr.data.features import GlobalCmvn
from slimasr.export import ExportWrapper, check_parity, export_onnx, parity_cases
from slimasr.runtime import open_session, run_session
from tests.prune.helpers import random_model

FEATS, VOCAB = 80, 11
LENGTHS = [37, 160, 523]  # frames: each alone, then padded together
ATOL = 1e-4

# Widths as pruning leaves them: uneven per layer, some sub-modules removed (width 0).
PRUNED = {
    "dnn": ("dnn", dict(num_features=FEATS, context_left=3, context_right=2, stride=2,
                        hidden_sizes=[24, 17, 9], dropout=0.0)),
    "crnn_bilstm": ("crnn", dict(num_features=FEATS, subsampling_channels=[8, 5],
                                 rnn_hidden_sizes=[16, 11])),
    "crnn_bigru_x4": ("crnn", dict(num_features=FEATS, subsampling_channels=[6, 3], rnn_type="gru",
                                   subsampling_strides=[[2, 2], [2, 2]], rnn_hidden_sizes=[12, 7])),
    "crnn_unilstm_causal": ("crnn", dict(num_features=FEATS, subsampling_channels=[8, 5],
                                         rnn_hidden_sizes=[16, 9], bidirectional=False)),
    "crnn_unigru_causal": ("crnn", dict(num_features=FEATS, subsampling_channels=[7, 4], rnn_type="gru",
                                        rnn_hidden_sizes=[13], bidirectional=False)),
    "crnn_packed": ("crnn", dict(num_features=FEATS, subsampling_channels=[4, 4],
                                 rnn_hidden_sizes=[10], pack_sequences=True)),
    "conformer": ("conformer", dict(num_features=FEATS, subsampling_channels=[8, 6], d_model=16,
                                    num_blocks=3, num_heads=[2, 0, 1], head_dim=4,
                                    ffn_dim=[12, 0, 7, 9, 0, 5], conv_channels=[6, 5, 0],
                                    conv_kernel=5, max_relative_position=8)),
    "conformer_layernorm_x2": ("conformer", dict(num_features=FEATS, subsampling_channels=[4, 4],
                                                 subsampling_strides=[[2, 2], [1, 2]], d_model=8,
                                                 num_blocks=2, num_heads=[1, 2], head_dim=4,
                                                 ffn_dim=[6, 10, 0, 3], conv_channels=[3, 7],
                                                 conv_kernel=3, conv_norm="layer",
                                                 attention_layer_scale=0.5)),
}


def random_cmvn(seed: int = 1) -> GlobalCmvn:
    """Kaldi-scale log-mel statistics (means around -10, stds 1..4): far from (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    return GlobalCmvn(mean=-10 + 2 * torch.randn(FEATS, generator=gen),
                      std=1 + 3 * torch.rand(FEATS, generator=gen))


def exported(key: str, tmp_path: Path) -> tuple[ExportWrapper, object]:
    name, cfg = PRUNED[key]
    wrapper = ExportWrapper(random_model(name, cfg, VOCAB), random_cmvn())
    path = export_onnx(wrapper, tmp_path / f"{key}.onnx", opset=17)
    return wrapper, open_session(path)


@pytest.mark.parametrize("key", sorted(PRUNED))
def test_onnx_equals_pytorch_at_batch_1_and_padded_batch_of_3(key, tmp_path):
    wrapper, session = exported(key, tmp_path)
    cases = parity_cases(wrapper, LENGTHS)
    assert [label for label, _, _ in cases] == [
        "synthetic batch 1, 37 frames", "synthetic batch 1, 160 frames",
        "synthetic batch 1, 523 frames", "synthetic padded batch of 3"]
    result = check_parity(wrapper, session, cases, ATOL)
    assert result["parity_max_abs_diff"] <= ATOL and result["parity_transcripts_equal"]


@pytest.mark.parametrize("key", ["dnn", "crnn_bilstm", "crnn_unigru_causal", "conformer"])
def test_padded_batch_gives_each_utterance_its_batch_1_output(key, tmp_path):
    """Padding (here with sherpa-onnx's pad value, log(1e-10)) never reaches a valid frame."""
    _, session = exported(key, tmp_path)
    feats = [np.random.default_rng(i).normal(-10, 3, (t, FEATS)).astype(np.float32)
             for i, t in enumerate(LENGTHS)]
    padded = np.full((3, max(LENGTHS), FEATS), np.log(1e-10), dtype=np.float32)
    for i, f in enumerate(feats):
        padded[i, : len(f)] = f
    batch, batch_lens = run_session(session, padded, np.array(LENGTHS))
    for i, f in enumerate(feats):
        alone, lens = run_session(session, f[None], np.array([len(f)]))
        assert lens[0] == batch_lens[i]
        np.testing.assert_allclose(batch[i, : lens[0]], alone[0, : lens[0]], atol=1e-5, rtol=0)


def test_cmvn_is_folded_into_the_graph(tmp_path):
    """The graph takes raw fbank: its output is the model's output on CMVN-normalized features,
    computed here through GlobalCmvn (the PyTorch front end's path), not the wrapper."""
    name, cfg = PRUNED["crnn_bilstm"]
    model, cmvn = random_model(name, cfg, VOCAB), random_cmvn()
    session = open_session(export_onnx(ExportWrapper(model, cmvn), tmp_path / "m.onnx", opset=17))
    raw = cmvn.mean + cmvn.std * torch.randn(2, 90, FEATS)
    lens = torch.tensor([90, 61])
    got, got_lens = run_session(session, raw.numpy(), lens.numpy())
    with torch.inference_mode():
        normalized, _ = model(cmvn(raw), lens)
        unnormalized, _ = model(raw, lens)
    assert got_lens.tolist() == [45, 31]
    for i, n in enumerate(got_lens.tolist()):
        np.testing.assert_allclose(got[i, :n], normalized[i, :n].numpy(), atol=ATOL, rtol=0)
    assert np.abs(got[0] - unnormalized[0].numpy()).max() > 100 * ATOL  # without CMVN: far off


def test_graph_inputs_outputs_and_metadata(tmp_path):
    import onnx

    name, cfg = PRUNED["conformer"]
    path = export_onnx(ExportWrapper(random_model(name, cfg, VOCAB), None), tmp_path / "m.onnx", opset=17,
                       metadata={"model_type": "zipformer2_ctc", "vocab_size": str(VOCAB)})
    session = open_session(path)
    assert [(i.name, i.shape, i.type) for i in session.get_inputs()] == [
        ("x", ["N", "T", FEATS], "tensor(float)"), ("x_lens", ["N"], "tensor(int64)")]
    assert [(o.name, o.shape, o.type) for o in session.get_outputs()] == [
        ("log_probs", ["N", "T_out", VOCAB], "tensor(float)"), ("log_probs_len", ["N"], "tensor(int64)")]
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta == {"model_type": "zipformer2_ctc", "vocab_size": "11"}
    log_probs, _ = run_session(session, np.zeros((1, 50, FEATS), np.float32), np.array([50]))
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, atol=1e-5)  # a log-softmax
