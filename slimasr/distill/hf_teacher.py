"""A Hugging Face CTC model (``Wav2Vec2ForCTC``, ``HubertForCTC``) as a distillation teacher.

    teacher = HfCtcTeacher("models/wav2vec2-base-960h")       # a LOCAL directory
    log_probs, lens, hidden = teacher.forward(waves, hidden_layers=[4, 8])
    index = teacher.vocab_map(tokenizer.tokens)              # None: vocabularies do not match
    student_view = teacher.map_log_probs(log_probs, index)   # (N, T, V_student)
    texts = teacher.transcribe(waves)                        # pseudo-labels

The directory is what ``save_pretrained`` writes plus the CTC tokenizer's ``vocab.json``:
``config.json``, ``model.safetensors`` (pickled ``pytorch_model.bin`` is refused), ``vocab.json``
(token -> id; ``"<pad>"`` = ``config.pad_token_id`` is the CTC blank, ``"|"`` the word
delimiter) and optionally ``preprocessor_config.json`` (``do_normalize``, ``padding_value``,
``sampling_rate``). Nothing is downloaded. ``transformers`` is an optional dependency
(``pip install 'slimasr[hf]'``), imported only when a teacher is built.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import SafetensorError

from slimasr.decode.greedy import greedy_decode, ids_to_text
from slimasr.errors import DataError, SlimasrError

SAMPLE_RATE = 16000  # Hz; the rate every supported teacher was trained at
ARCHITECTURES = ("Wav2Vec2ForCTC", "HubertForCTC")
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")  # single or sharded
TEACHER_WORD_DELIM = "|"  # Wav2Vec2CTCTokenizer's word delimiter token
STUDENT_WORD_SEP = " "  # slimasr character vocabularies separate words with a space
BLANK_ID = 0  # slimasr's CTC blank id
NORM_EPS = 1e-7  # variance floor of the per-utterance normalisation (Wav2Vec2FeatureExtractor's)
PREPROCESSOR_DEFAULTS = {  # Wav2Vec2FeatureExtractor's defaults, used when the file is absent
    "do_normalize": True, "padding_value": 0.0, "sampling_rate": SAMPLE_RATE}
INSTALL_HINT = "pip install 'slimasr[hf]'"
MAX_LISTED = 8  # file names an error message lists at most


class HfCtcTeacher:
    """A frozen HF CTC model in eval mode. Attributes: ``tokens`` (teacher vocabulary by id; ids
    absent from vocab.json are ""), ``blank_id``, ``vocab_size``, ``hidden_size``,
    ``num_layers``, ``downsample`` (waveform samples per output frame), ``sample_rate``,
    ``kind`` ("hf", beside ``SlimasrTeacher.kind``)."""

    kind = "hf"
    sample_rate = SAMPLE_RATE

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu"):
        self.model_dir = Path(model_dir)
        self.device = torch.device(device)
        config = _read_config(self.model_dir)
        self.preprocess = {**PREPROCESSOR_DEFAULTS, **_read_preprocessor(self.model_dir)}
        if int(self.preprocess["sampling_rate"]) != SAMPLE_RATE:
            raise DataError(self.model_dir / "preprocessor_config.json",
                            f"sampling_rate {self.preprocess['sampling_rate']}, not {SAMPLE_RATE}")
        self.model = _load_model(self.model_dir, config["architectures"][0]).to(self.device)
        cfg = self.model.config
        self.vocab_size = int(cfg.vocab_size)
        self.tokens, self.blank_id = _read_vocab(self.model_dir, self.vocab_size, cfg.pad_token_id)
        self.hidden_size = int(cfg.hidden_size)
        self.num_layers = int(cfg.num_hidden_layers)
        self.downsample = int(np.prod(cfg.conv_stride))
        self.min_samples = _receptive_field(cfg.conv_kernel, cfg.conv_stride)
        self.use_attention_mask = cfg.feat_extract_norm == "layer"  # as HF's feature extractor

    # -- forward -------------------------------------------------------------------------------

    @torch.no_grad()
    def forward(self, waves: Sequence[np.ndarray], hidden_layers: Sequence[int] = ()
                ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """waves: N 1-D float32 arrays at 16 kHz. Returns log_probs (N, T, V_teacher), lens (N,)
        int64 valid frames, and one (N, T, hidden_size) tensor per entry of ``hidden_layers``
        (indices into HF's ``hidden_states``: 0 = the transformer's input, i = layer i's output;
        negative counts from the end). Group-norm models (``feat_extract_norm="group"``) get no
        attention mask, as in HF: their padded frames and, slightly, their valid ones depend on
        the batch's padding."""
        inputs, sample_lens = self._batch(waves)
        kwargs: dict[str, Any] = {"output_hidden_states": bool(hidden_layers)}
        if self.use_attention_mask:
            kwargs["attention_mask"] = _sample_mask(sample_lens, inputs.shape[1]).to(self.device)
        out = self.model(inputs, **kwargs)
        log_probs = out.logits.float().log_softmax(dim=-1)  # (N, T, V)
        lens = self.model._get_feat_extract_output_lengths(sample_lens).long().to(self.device)
        lens = lens.clamp(max=log_probs.shape[1])
        return log_probs, lens, self._pick_hidden(out, hidden_layers)

    __call__ = forward

    def _batch(self, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """N waveforms -> (N, S_max) float32 on the device (normalised, padded) and (N,) lengths."""
        if len(waves) == 0:
            raise ValueError("no waveforms given")
        arrays = [self._check_wave(i, w) for i, w in enumerate(waves)]
        if self.preprocess["do_normalize"]:
            arrays = [_normalize(a) for a in arrays]
        lens = torch.tensor([len(a) for a in arrays], dtype=torch.long)
        batch = np.full((len(arrays), int(lens.max())), self.preprocess["padding_value"],
                        dtype=np.float32)
        for row, a in zip(batch, arrays):
            row[: len(a)] = a
        return torch.from_numpy(batch).to(self.device), lens

    def _check_wave(self, index: int, wave: np.ndarray) -> np.ndarray:
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"waveform {index} has shape {wave.shape}; expected 1-D mono")
        if len(wave) < self.min_samples:
            raise ValueError(f"waveform {index} has {len(wave)} samples; the teacher needs at "
                             f"least {self.min_samples}")
        return wave

    def _pick_hidden(self, out: Any, hidden_layers: Sequence[int]) -> list[torch.Tensor]:
        states = out.hidden_states or ()
        for i in hidden_layers:
            if not -len(states) <= i < len(states):
                raise ValueError(f"hidden layer {i} out of range: the teacher has "
                                 f"{len(states)} hidden states (0..{len(states) - 1})")
        return [states[i].float() for i in hidden_layers]

    # -- vocabulary ------------------------------------------------------------------------------

    def vocab_map(self, student_tokens: Sequence[str]) -> torch.Tensor | None:
        """(V_student,) int64: for each student id, the teacher id of the same symbol (exact
        match first, then case-insensitive; student " " = teacher "|"; student blank id 0 =
        teacher blank). None when a non-blank student token has no teacher counterpart."""
        exact = {t: i for i, t in enumerate(self.tokens) if t and not _is_special(t)}
        folded: dict[str, int] = {}
        for t, i in exact.items():
            folded.setdefault(t.lower(), i)
        index = [self.blank_id]
        for token in list(student_tokens)[1:]:
            symbol = TEACHER_WORD_DELIM if token == STUDENT_WORD_SEP else token
            found = exact.get(symbol, folded.get(symbol.lower()))
            if found is None:
                return None
            index.append(found)
        return torch.tensor(index, dtype=torch.long)

    @staticmethod
    def map_log_probs(teacher_logp: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(N, T, V_teacher) -> (N, T, V_student): the teacher's log-probs at ``index`` (from
        ``vocab_map``), renormalised over that subset (log-softmax)."""
        return teacher_logp.index_select(-1, index.to(teacher_logp.device)).log_softmax(dim=-1)

    def transcribe(self, waves: Sequence[np.ndarray]) -> list[str]:
        """Greedy CTC transcripts: repeats collapsed, blank and special tokens (``<...>``)
        dropped, "|" -> space, lowercased, whitespace squeezed."""
        log_probs, lens, _ = self.forward(waves)
        tokens = ["" if _is_special(t) else t for t in self.tokens]
        ids = greedy_decode(log_probs, lens, self.blank_id)
        return [ids_to_text(seq, tokens, TEACHER_WORD_DELIM).lower() for seq in ids]


# ---------------------------------------------------------------------------------------------
# Loading


def _import_transformers() -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise SlimasrError(f"the Hugging Face teacher needs transformers: {INSTALL_HINT}") from None


def _read_config(model_dir: Path) -> dict:
    """config.json as a dict, after checking the directory holds safetensors weights and a
    supported architecture."""
    if not model_dir.is_dir():
        raise DataError(model_dir, "not a directory (a local Hugging Face model is expected)")
    if not any((model_dir / name).is_file() for name in WEIGHTS_FILES):
        found = ", ".join(sorted(p.name for p in model_dir.iterdir())[:MAX_LISTED]) or "nothing"
        raise DataError(model_dir, f"no model.safetensors (found: {found}); pickled weights are "
                        "not loaded: re-save with save_pretrained(safe_serialization=True)")
    config = _read_json(model_dir / "config.json")
    archs = config.get("architectures") or []
    if not isinstance(archs, list) or len(archs) != 1 or archs[0] not in ARCHITECTURES:
        raise DataError(model_dir / "config.json",
                        f"architectures {archs}; supported: {', '.join(ARCHITECTURES)}")
    return config


def _read_preprocessor(model_dir: Path) -> dict:
    path = model_dir / "preprocessor_config.json"
    return _read_json(path) if path.is_file() else {}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(path, "expected a JSON object")
    return data


def _load_model(model_dir: Path, arch: str) -> torch.nn.Module:
    """The HF model in fp32 eval mode, from safetensors only, never from the network."""
    model_cls = getattr(_import_transformers(), arch)
    try:
        model = model_cls.from_pretrained(model_dir, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(model_dir, f"cannot load {arch}: {first}") from None
    return model.float().eval().requires_grad_(False)


def _read_vocab(model_dir: Path, vocab_size: int, pad_id: int | None) -> tuple[list[str], int]:
    """vocab.json (token -> id) -> (tokens by id, length ``vocab_size``, and the blank id)."""
    path = model_dir / "vocab.json"
    vocab = _read_json(path)
    if not all(isinstance(i, int) for i in vocab.values()):
        raise DataError(path, "expected {token: id} with integer ids (one language)")
    if bad := [t for t, i in vocab.items() if not 0 <= i < vocab_size]:
        raise DataError(path, f"ids of {bad[:3]} outside the model's vocab_size {vocab_size}")
    tokens = [""] * vocab_size
    for token, i in vocab.items():
        tokens[i] = token
    blank = pad_id if pad_id is not None else vocab.get("<pad>")
    if blank is None or not 0 <= blank < vocab_size:
        raise DataError(path, "no CTC blank: config.json has no pad_token_id and no '<pad>' token")
    return tokens, int(blank)


# ---------------------------------------------------------------------------------------------
# Helpers


def _normalize(wave: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over this utterance alone. Hand-written: HF's
    Wav2Vec2FeatureExtractor, when it returns no attention mask (group-norm models), normalises
    the padded array, so an utterance's input would depend on its batch-mates."""
    return ((wave - wave.mean()) / np.sqrt(wave.var() + NORM_EPS)).astype(np.float32)


def _sample_mask(lens: torch.Tensor, max_len: int) -> torch.Tensor:
    """(N,) lengths -> (N, S) int64 attention mask (1 = real sample)."""
    return (torch.arange(max_len)[None, :] < lens[:, None]).long()


def _receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Fewest samples for which the conv feature encoder yields one frame."""
    need = 1
    for k, s in reversed(list(zip(kernels, strides))):
        need = (need - 1) * s + k
    return need


def _is_special(token: str) -> bool:
    """``<pad>``, ``<s>``, ``</s>``, ``<unk>``...: never a character of a transcript."""
    return len(token) > 2 and token.startswith("<") and token.endswith(">")
