"""The Hugging Face CTC teacher, on tiny randomly initialised Wav2Vec2 and HuBERT models."""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from slimasr.distill.hf_teacher import HfCtcTeacher  # noqa: E402
from slimasr.errors import DataError, SlimasrError  # noqa: E402
from slimasr.text import CharTokenizer  # noqa: E402

VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *string.ascii_uppercase, "'"]  # 32 tokens
TINY = dict(  # a few thousand parameters; forward in milliseconds
    vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=32, conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2),
    num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, pad_token_id=0,
)


def _write_teacher(path: Path, arch: str, layer_norm: bool = False) -> Path:
    torch.manual_seed(0)
    norm = dict(feat_extract_norm="layer", do_stable_layer_norm=True) if layer_norm else {}
    if arch == "hubert":
        model = transformers.HubertForCTC(transformers.HubertConfig(**TINY, **norm))
    else:
        model = transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(**TINY, **norm))
    model.save_pretrained(path, safe_serialization=True)
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    pre = {"do_normalize": True, "feature_size": 1, "padding_side": "right", "padding_value": 0.0,
           "return_attention_mask": layer_norm, "sampling_rate": 16000}
    (path / "preprocessor_config.json").write_text(json.dumps(pre))
    return path


def _waves(*lengths: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) * 0.1 for n in lengths]


@pytest.fixture(scope="module")
def w2v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_teacher(tmp_path_factory.mktemp("w2v"), "wav2vec2")


@pytest.mark.parametrize("arch", ["wav2vec2", "hubert"])
def test_forward_shapes_lens_and_hidden(tmp_path: Path, arch: str) -> None:
    teacher = HfCtcTeacher(_write_teacher(tmp_path, arch))
    assert teacher.kind == "hf" and teacher.sample_rate == 16000
    assert teacher.blank_id == 0 and teacher.vocab_size == 32
    assert teacher.downsample == 10 and teacher.num_layers == 2
    log_probs, lens, hidden = teacher.forward(_waves(1600, 800), hidden_layers=[0, 2, -1])
    # conv (10, stride 5) then (3, stride 2): 1600 -> 319 -> 159, 800 -> 159 -> 79
    assert log_probs.shape == (2, 159, 32) and lens.tolist() == [159, 79]
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 159), atol=1e-5)
    assert [tuple(h.shape) for h in hidden] == [(2, 159, 16)] * 3
    assert torch.equal(hidden[1], hidden[2])
    assert teacher.forward(_waves(1600))[2] == []
    with pytest.raises(ValueError, match="hidden layer 3"):
        teacher.forward(_waves(1600), hidden_layers=[3])


def test_normalisation_per_utterance(w2v_dir: Path) -> None:
    teacher = HfCtcTeacher(w2v_dir)
    wave = _waves(1200)[0]
    a, _, _ = teacher.forward([wave])
    b, _, _ = teacher.forward([wave * 7.0 + 0.3])
    assert torch.allclose(a, b, atol=1e-4)
    # receptive field: kernel 3 / stride 2 needs 3 frames of the first conv, (3 - 1) * 5 + 10 = 20
    with pytest.raises(ValueError, match="waveform 1 has 19 samples; .* at least 20"):
        teacher.forward([wave, np.zeros(19, np.float32)])
    assert teacher.forward([np.zeros(20, np.float32)])[1].tolist() == [1]


def test_layer_norm_model_batches_with_attention_mask(tmp_path: Path) -> None:
    teacher = HfCtcTeacher(_write_teacher(tmp_path, "hubert", layer_norm=True))
    assert teacher.use_attention_mask
    short, long = _waves(800, 1600, seed=1)
    batch, lens, _ = teacher.forward([short, long])
    alone, alone_lens, _ = teacher.forward([short])
    assert lens[0] == alone_lens[0] == 79
    assert torch.allclose(batch[0, :79], alone[0], atol=1e-4)


def test_vocab_map_onto_char_tokenizer(w2v_dir: Path) -> None:
    teacher = HfCtcTeacher(w2v_dir)
    tokens = CharTokenizer().tokens  # ["<blk>", " ", "'", "a", ..., "z"]
    index = teacher.vocab_map(tokens)
    assert index is not None and index.shape == (len(tokens),)
    assert index[0] == 0 and index[1] == VOCAB.index("|") and index[2] == VOCAB.index("'")
    assert index[tokens.index("a")] == 5 and index[tokens.index("z")] == 30
    assert teacher.vocab_map(["<blk>", " ", "a", "é"]) is None
    assert teacher.vocab_map(["<blk>", "<unk>", "a"]) is None

    log_probs, _, _ = teacher.forward(_waves(900))
    mapped = teacher.map_log_probs(log_probs, index)
    assert mapped.shape == (1, log_probs.shape[1], len(tokens))
    assert torch.allclose(mapped.exp().sum(-1), torch.ones(mapped.shape[:2]), atol=1e-5)
    # renormalised over the subset: ratios between kept tokens are the teacher's
    diff = mapped[..., 3] - mapped[..., 4]
    assert torch.allclose(diff, log_probs[..., 5] - log_probs[..., 6], atol=1e-5)


def test_transcribe_uses_mapped_alphabet(w2v_dir: Path) -> None:
    teacher = HfCtcTeacher(w2v_dir)
    with torch.no_grad():  # make letters win often enough for non-empty transcripts
        teacher.model.lm_head.bias[:5] -= 5.0
    texts = teacher.transcribe(_waves(3000, 1000, seed=2))
    assert len(texts) == 2 and any(texts)
    allowed = set(CharTokenizer().tokens[1:])
    for text in texts:
        assert set(text) <= allowed and text == " ".join(text.split())
    # the same ids as greedy decoding of the forward pass
    log_probs, lens, _ = teacher.forward(_waves(3000, 1000, seed=2))
    best = log_probs[0, : lens[0]].argmax(-1).tolist()
    collapsed = [t for k, t in enumerate(best) if t != 0 and (k == 0 or best[k - 1] != t)]
    expected = "".join(VOCAB[t] for t in collapsed).replace("|", " ").lower()
    assert texts[0] == " ".join(expected.split())


def test_refuses_pickled_weights_and_missing_dirs(tmp_path: Path, w2v_dir: Path) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "vocab.json"):
        (pickled / name).write_bytes((w2v_dir / name).read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(DataError, match="no model.safetensors") as err:
        HfCtcTeacher(pickled)
    assert "\n" not in str(err.value) and str(pickled) in str(err.value)

    with pytest.raises(DataError, match="not a directory") as err:
        HfCtcTeacher(tmp_path / "missing")
    assert "\n" not in str(err.value)

    no_config = tmp_path / "no_config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes((w2v_dir / "model.safetensors").read_bytes())
    with pytest.raises(DataError, match="config.json: file not found"):
        HfCtcTeacher(no_config)


def test_refuses_other_architectures_and_bad_vocab(tmp_path: Path, w2v_dir: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for path in w2v_dir.iterdir():
        (other / path.name).write_bytes(path.read_bytes())
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "architectures": ["WhisperModel"]}))
    with pytest.raises(DataError, match="WhisperModel.*supported: Wav2Vec2ForCTC, HubertForCTC"):
        HfCtcTeacher(other)

    (other / "config.json").write_text(json.dumps(config))
    weights = (other / "model.safetensors").read_bytes()
    (other / "model.safetensors").write_bytes(weights[:100])  # truncated
    with pytest.raises(DataError, match="cannot load Wav2Vec2ForCTC: .*header") as err:
        HfCtcTeacher(other)
    assert "\n" not in str(err.value)

    (other / "model.safetensors").write_bytes(weights)
    (other / "vocab.json").write_text(json.dumps({"<pad>": 0, "A": 40}))
    with pytest.raises(DataError, match="vocab.json: ids of \\['A'\\] outside"):
        HfCtcTeacher(other)


def test_missing_transformers_is_one_clear_line(monkeypatch: pytest.MonkeyPatch,
                                                w2v_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import now raises ImportError
    with pytest.raises(SlimasrError, match=r"pip install 'slimasr\[hf\]'") as err:
        HfCtcTeacher(w2v_dir)
    assert "\n" not in str(err.value)


def test_audio_with_nan_samples_is_skipped_and_counted_like_the_slimasr_teacher_path(
        tmp_path: Path, w2v_dir: Path) -> None:
    """NaN audio used to go through the teacher: NaN posteriors and a garbage transcript were
    cached for it. Now it is left out of its batch, named, and counted in the cache's meta.json,
    as the slimasr teacher's batches (AsrDataset) leave it out and name it."""
    from lhotse import CutSet, Recording, RecordingSet

    from slimasr.decode import DecodeConfig
    from slimasr.distill.teacher import META, fill_cache, hf_batches
    from tests.data.fixtures import BAD_SAMPLES, write_audio, write_bad_audio

    files = [write_audio(tmp_path / "good1.wav"), write_bad_audio(tmp_path / "bad.wav", "nan"),
             write_audio(tmp_path / "good2.wav", seed=1)]
    cuts = CutSet.from_manifests(RecordingSet.from_recordings(
        Recording.from_file(f, recording_id=f.stem) for f in files))
    good = [c.id for c in cuts if c.recording_id.startswith("good")]
    batches = list(hf_batches(cuts, 2))
    assert [b["cut_ids"] for b in batches] == [good]
    assert batches[0]["bad_audio"] == [f"{files[1]}: {BAD_SAMPLES['nan']}"]
    tokens = CharTokenizer().tokens
    cache = fill_cache(HfCtcTeacher(w2v_dir), iter(batches), tmp_path / "cache", {"stamp": 1}, 4, tokens,
                       DecodeConfig(), [], total=3, show_progress=False)
    assert sorted(cache.transcripts) == sorted(cache.logp) == good
    assert all(torch.isfinite(cache.logp[c].float()).all() for c in cache.logp)
    meta = json.loads((tmp_path / "cache" / META).read_text())
    assert meta["cuts"] == 2 and meta["bad_audio"] == [f"{files[1]}: {BAD_SAMPLES['nan']}"]
