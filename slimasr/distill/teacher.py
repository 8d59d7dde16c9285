"""Teachers and the teacher cache.

A teacher is a slimasr model directory (it reads the same log-mel features as the student, which
then shares its tokenizer, features, CMVN and normalizer) or a local Hugging Face
Wav2Vec2ForCTC / HubertForCTC directory (it reads waveforms; its vocabulary is mapped onto the
student's characters where they share symbols, else only its transcripts are used).

The cache (``OUT/teacher_cache/``) holds, per training cut, the teacher's top-k log-posteriors
per frame (fp16 values, int16 ids, in the student's vocabulary) and its transcript, so training
epochs do not run the teacher. ``meta.json`` is written last: its presence means complete. A
cut whose audio is unusable (NaN/inf samples, an absurd peak) gets no entry: it is skipped,
counted and named in meta.json's ``bad_audio`` (either teacher), and training skips it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from slimasr.data.validate import cut_audio_problem
from slimasr.config import config_to_dict
from slimasr.decode import DecodeConfig, corpus_vocabulary, make_decoder, word_separator
from slimasr.errors import DataError
from slimasr.frontend import Frontend
from slimasr.io import atomic_path, read_json, write_json_atomic
from slimasr.models import load_model
from slimasr.models.io import read_model_config
from slimasr.progress import progress_bar
from slimasr.text.tokenizer import TOKENIZER_JSON

CACHE_DIR = "teacher_cache"
POSTERIORS = "posteriors.safetensors"
TRANSCRIPTS = "transcripts.json"
META = "meta.json"
MIN_PROB = 1e-8  # floor of the probability given to tokens outside a cached top-k


def teacher_kind(path: str | Path) -> str:
    """"hf" for a Hugging Face *ForCTC directory, "slimasr" for a slimasr model directory."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise DataError(path, "not a model directory (no config.json)")
    config = read_json(path / "config.json")
    if any(str(a).endswith("ForCTC") for a in config.get("architectures") or []):
        return "hf"
    if "architecture" in config:
        return "slimasr"
    raise DataError(path / "config.json", "neither a slimasr model nor a Hugging Face *ForCTC model")


class SlimasrTeacher:
    """A slimasr model directory as a teacher: reads the student's (= its own) features."""

    kind = "slimasr"

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu"):
        self.model_dir = Path(model_dir)
        self.model = load_model(model_dir, device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.frontend = Frontend.load(model_dir)
        self.tokens = list(self.frontend.tokenizer.tokens)
        self.device = torch.device(device)

    @torch.no_grad()
    def forward_features(self, x: torch.Tensor, lens: torch.Tensor, hidden: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """x: (N, T, F) features, lens: (N,) -> log_probs (N, T', V), (N,), hidden states."""
        self.model.eval()
        x, lens = x.to(self.device), lens.to(self.device)
        if hidden:
            return self.model.forward_hidden(x, lens)
        log_probs, out_lens = self.model(x, lens)
        return log_probs, out_lens, []


class EnsembleTeacher:
    """Several slimasr teachers as one: ``forward_features`` gives the log of their averaged
    posteriors (the mean of probabilities, each member's output resampled to the first's frames
    when their rates differ). Members share the tokens and the feature settings; a member with
    another CMVN gets the features renormalised to its own. The first member is the front end
    (and the model ``student.init: teacher`` cuts down)."""

    kind = "slimasr"

    def __init__(self, members: Sequence[SlimasrTeacher]):
        first = members[0]
        for other in members[1:]:
            _check_same_frontend(first, other)
        self.members = list(members)
        self.model_dir, self.model, self.frontend = first.model_dir, first.model, first.frontend
        self.tokens, self.device = first.tokens, first.device

    @torch.no_grad()
    def forward_features(self, x: torch.Tensor, lens: torch.Tensor, hidden: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """x: (N, T, F) features (the first member's CMVN), lens: (N,) -> the averaged
        log_probs (N, T', V), (N,) and no hidden states (an ensemble has none to match)."""
        if hidden:
            raise ValueError("an ensemble teacher has no hidden states to match")
        logp, out_lens, _ = self.members[0].forward_features(x, lens)
        probs = logp.float().exp()
        for member in self.members[1:]:
            m_logp, m_lens, _ = member.forward_features(self._renormalise(x, member), lens)
            if m_logp.shape[1] != logp.shape[1] or not torch.equal(m_lens, out_lens):
                from slimasr.distill.losses import align_log_probs  # noqa: PLC0415 - no cycle

                m_logp = align_log_probs(m_logp.float(), m_lens, out_lens, logp.shape[1])
            probs = probs + m_logp.float().exp()
        mean = probs / len(self.members)
        return mean.clamp(min=torch.finfo(mean.dtype).tiny).log(), out_lens, []

    def _renormalise(self, x: torch.Tensor, member: SlimasrTeacher) -> torch.Tensor:
        """Features normalised with the first member's CMVN, renormalised with ``member``'s."""
        own, theirs = self.frontend.cmvn, member.frontend.cmvn
        if own is None and theirs is None:
            return x
        raw = x if own is None else x * own.std.to(x) + own.mean.to(x)
        return raw if theirs is None else (raw - theirs.mean.to(x)) / theirs.std.to(x)


def _check_same_frontend(first: SlimasrTeacher, other: SlimasrTeacher) -> None:
    """One-line DataError when ``other`` writes other tokens or reads other features."""
    if other.tokens != first.tokens:
        raise DataError(other.model_dir, f"ensemble teachers must share one tokenizer: its "
                                         f"{len(other.tokens)} tokens differ from {first.model_dir}'s "
                                         f"{len(first.tokens)}")
    if config_to_dict(other.frontend.features) != config_to_dict(first.frontend.features):
        raise DataError(other.model_dir, f"ensemble teachers must read the same features; "
                                         f"{first.model_dir}'s feature settings differ")


def load_teacher(path: str | Path, kind: str = "auto", device: str | torch.device = "cpu",
                 paths: Sequence[str | Path] = ()) -> Any:
    """A :class:`SlimasrTeacher` or an ``HfCtcTeacher`` for ``path``, or an
    :class:`EnsembleTeacher` of ``paths`` when it names more than one directory."""
    if len(paths) > 1:
        for member in paths:
            if kind == "hf" or teacher_kind(member) != "slimasr":
                raise DataError(member, "ensemble teachers must be slimasr model directories")
            read_model_config(member)
        return EnsembleTeacher([SlimasrTeacher(m, device) for m in paths])
    kind = teacher_kind(path) if kind == "auto" else kind
    if kind == "hf":
        from slimasr.distill.hf_teacher import HfCtcTeacher  # noqa: PLC0415 - needs transformers

        return HfCtcTeacher(path, device)
    read_model_config(path)  # one-line error for a broken directory
    return SlimasrTeacher(path, device)


def copy_frontend(teacher: SlimasrTeacher, out_dir: Path) -> None:
    """Put the teacher's tokenizer and CMVN into the student's directory (it shares them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (out_dir / TOKENIZER_JSON).is_file():
        teacher.frontend.save(out_dir)


# ---------------------------------------------------------------------------------------------
# Cache


@dataclass
class TeacherCache:
    """Cached teacher outputs: top-k log-posteriors per cut (student vocabulary) and transcripts."""

    logp: dict[str, torch.Tensor]  # cut id -> (T, k) float16
    ids: dict[str, torch.Tensor]  # cut id -> (T, k) int16
    transcripts: dict[str, str]  # cut id -> the teacher's transcript (normalized)
    vocab_size: int | None  # student vocabulary size (None: no frame posteriors, transcripts only)

    def dense(self, cut_ids: Sequence[str], num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, num_frames, V)`` log-posteriors (top-k; the rest of the mass spread evenly over
        the other tokens) and ``(N,)`` teacher frame counts, for a batch of cuts."""
        if self.vocab_size is None:
            raise RuntimeError("the teacher cache holds transcripts only (vocabularies differ)")
        v = self.vocab_size
        out = torch.full((len(cut_ids), num_frames, v), math.log(1.0 / v))
        lens = torch.zeros(len(cut_ids), dtype=torch.int64)
        for i, cut_id in enumerate(cut_ids):
            logp, ids = self.logp[cut_id].float(), self.ids[cut_id].long()
            t, k = logp.shape
            rest = (1.0 - logp.exp().sum(-1, keepdim=True)).clamp(min=MIN_PROB) / max(v - k, 1)
            frame = rest.log().expand(t, v).clone()
            frame.scatter_(1, ids, logp)
            out[i, :t] = frame.log_softmax(-1)
            lens[i] = t
        return out, lens

    @classmethod
    def load(cls, folder: Path) -> "TeacherCache":
        meta = read_json(folder / META)
        tensors = load_file(str(folder / POSTERIORS)) if meta["vocab_size"] else {}
        logp = {k[: -len(".logp")]: t for k, t in tensors.items() if k.endswith(".logp")}
        ids = {k[: -len(".ids")]: t for k, t in tensors.items() if k.endswith(".ids")}
        return cls(logp, ids, read_json(folder / TRANSCRIPTS), meta["vocab_size"])


def cache_is_complete(folder: Path, stamp: dict) -> bool:
    return (folder / META).is_file() and read_json(folder / META).get("stamp") == stamp


def fill_cache(teacher: Any, batches: Iterable[dict], folder: Path, stamp: dict, top_k: int,
               student_tokens: Sequence[str], decode: DecodeConfig, lexicon_texts: Iterable[str],
               total: int, show_progress: bool = True, kind: str = "char") -> TeacherCache:
    """Run the teacher once over ``batches`` and write the cache atomically.

    Batches are ``AsrDataset`` batches (slimasr teacher: their features) or
    ``{"cut_ids", "waves"}`` (HF teacher; ``hf_batches``); either names the cuts it dropped for
    unusable audio in ``"bad_audio"``, which meta.json counts. Transcripts use ``decode``
    (greedy or beam + LM) in the student's vocabulary (a ``kind`` tokenizer's)."""
    index = teacher.vocab_map(list(student_tokens)) if teacher.kind == "hf" else None
    frame_level = teacher.kind == "slimasr" or index is not None
    decoder = make_decoder(list(student_tokens), decode, word_sep=word_separator(kind),
                           lexicon=corpus_vocabulary(lexicon_texts) if decode.method == "beam" else None)
    tensors: dict[str, torch.Tensor] = {}
    transcripts: dict[str, str] = {}
    bad_audio: list[str] = []
    with progress_bar(disable=not show_progress) as bar:
        task = bar.add_task("teacher outputs", total=total)
        for batch in batches:
            bad_audio += batch.get("bad_audio", [])
            if batch["cut_ids"]:  # empty: every cut's audio was unusable
                _cache_batch(teacher, batch, index, decoder, top_k, tensors, transcripts)
            bar.update(task, advance=len(batch["cut_ids"]) + len(batch.get("bad_audio", [])))
    _write_cache(folder, tensors if frame_level else None, transcripts, {
        "stamp": stamp, "vocab_size": len(student_tokens) if frame_level else None,
        "cuts": len(transcripts), "top_k": top_k, "bad_audio": bad_audio})
    return TeacherCache.load(folder)


def _cache_batch(teacher: Any, batch: dict, index: torch.Tensor | None, decoder: Any, top_k: int,
                 tensors: dict[str, torch.Tensor], transcripts: dict[str, str]) -> None:
    """The teacher's top-k posteriors (when they are in the student's vocabulary) and transcripts
    of one batch, added to ``tensors`` and ``transcripts``."""
    frame_level = teacher.kind == "slimasr" or index is not None
    if teacher.kind == "slimasr":
        logp, lens, _ = teacher.forward_features(batch["features"], batch["feature_lens"])
    else:
        logp, lens, _ = teacher.forward(batch["waves"])
        if index is not None:
            logp = teacher.map_log_probs(logp, index)
    logp, lens = logp.float().cpu(), lens.cpu()
    # Without a shared vocabulary only the teacher's own greedy transcripts can be used.
    texts = decoder.decode_batch(logp, lens) if frame_level else teacher.transcribe(batch["waves"])
    for i, cut_id in enumerate(batch["cut_ids"]):
        transcripts[cut_id] = " ".join(texts[i].split())
        if frame_level:
            k = min(top_k, logp.shape[-1])
            values, ids = logp[i, : int(lens[i])].topk(k, dim=-1)
            tensors[f"{cut_id}.logp"] = values.half().contiguous()
            tensors[f"{cut_id}.ids"] = ids.to(torch.int16).contiguous()


def _write_cache(folder: Path, tensors: dict[str, torch.Tensor] | None, transcripts: dict[str, str],
                 meta: dict) -> None:
    """Posteriors (None: transcripts only), transcripts, then meta.json (last: complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META).unlink(missing_ok=True)
    if tensors is not None:
        with atomic_path(folder / POSTERIORS) as tmp:
            save_file(tensors, str(tmp))
    write_json_atomic(folder / TRANSCRIPTS, transcripts)
    write_json_atomic(folder / META, meta)


def hf_batches(cuts: Any, batch_size: int) -> Iterable[dict]:
    """``{"cut_ids", "waves", "bad_audio"}`` batches of 16 kHz mono waveforms for an HF teacher:
    up to ``batch_size`` usable cuts each; a cut whose samples are NaN/inf or absurdly loud is
    left out and named in ``bad_audio`` (``path: problem``), as ``AsrDataset`` does."""
    batch: dict[str, list] = {"cut_ids": [], "waves": [], "bad_audio": []}
    for cut in cuts:
        wave = cut.resample(16000).load_audio()[0].astype(np.float32)
        if problem := cut_audio_problem(cut, wave):
            batch["bad_audio"].append(problem.message)
        else:
            batch["cut_ids"].append(cut.id)
            batch["waves"].append(wave)
        if len(batch["cut_ids"]) == batch_size:
            yield batch
            batch = {"cut_ids": [], "waves": [], "bad_audio": []}
    if batch["cut_ids"] or batch["bad_audio"]:
        yield batch
