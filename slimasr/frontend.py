"""What turns audio into model input and model output into text, saved beside every model.

A model directory holds, besides ``config.json`` and ``model.safetensors``::

    tokenizer.json (+ tokenizer.model)   the output units (slimasr.text)
    cmvn.json                            global mean/std of the training features
    config.json: "features"              FeatureConfig (log-mel settings)
                 "normalizer"            NormalizerConfig (transcript cleanup)
                 "cmvn"                  name of the CMVN file (absent: no CMVN)

    frontend = Frontend.load(model_dir)
    x, x_lens = frontend.batch([audio_1, audio_2])   # (N, T, F) normalized log-mels, (N,)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from slimasr.config import config_to_dict, from_dict
from slimasr.data.features import FeatureConfig, GlobalCmvn, compute_fbank
from slimasr.errors import DataError
from slimasr.text import NormalizerConfig, Tokenizer, load_tokenizer, normalize_text

CMVN_FILE = "cmvn.json"


@dataclass
class Frontend:
    tokenizer: Tokenizer  # output units; blank = 0
    features: FeatureConfig = field(default_factory=FeatureConfig)  # log-mel settings
    cmvn: GlobalCmvn | None = None  # global normalization of the features
    normalizer: NormalizerConfig = field(default_factory=NormalizerConfig)  # transcript cleanup

    def normalize(self, text: str) -> str:
        return normalize_text(text, self.normalizer)

    def features_of(self, audio: np.ndarray) -> torch.Tensor:
        """``audio: (S,)`` 16 kHz float mono -> ``(T, F)`` normalized log-mel features."""
        feats = compute_fbank(audio, self.features)
        return self.cmvn(feats) if self.cmvn is not None else feats

    def batch(self, audios: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad the features of several utterances: ``(N, T, F)`` float32 and ``(N,)`` int64."""
        feats = [self.features_of(a) for a in audios]
        lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
        x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
        return x, lens

    def config_entry(self) -> dict[str, Any]:
        """The keys this front end adds to a model's ``config.json`` (``save_model(extra=...)``)."""
        entry = {"features": config_to_dict(self.features), "normalizer": config_to_dict(self.normalizer)}
        if self.cmvn is not None:
            entry["cmvn"] = CMVN_FILE
        return entry

    def save(self, model_dir: str | Path) -> None:
        """Write the tokenizer and CMVN files (the config entry is saved with the model)."""
        self.tokenizer.save(model_dir)
        if self.cmvn is not None:
            self.cmvn.save(Path(model_dir) / CMVN_FILE)

    @classmethod
    def load(cls, model_dir: str | Path) -> "Frontend":
        from slimasr.models.io import read_model_config

        model_dir = Path(model_dir)
        config = read_model_config(model_dir)
        cmvn_name = config.get("cmvn")
        return cls(
            tokenizer=load_tokenizer(model_dir),
            features=_build(FeatureConfig, config.get("features") or {}, model_dir),
            cmvn=GlobalCmvn.load(model_dir / cmvn_name) if cmvn_name else None,
            normalizer=_build(NormalizerConfig, config.get("normalizer") or {}, model_dir),
        )


def _build(cls: type, data: dict, model_dir: Path):
    from slimasr.errors import ConfigError

    try:
        return from_dict(cls, data, f"frontend.{cls.__name__}")
    except ConfigError as e:
        raise DataError(model_dir / "config.json", str(e)) from None
