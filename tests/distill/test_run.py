"""End-to-end distillation on the tiny tone corpus: a tiny teacher, then students."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from lhotse import CutSet
from safetensors.torch import load_file

from slimasr.cli import main
from slimasr.distill import distill_model
from slimasr.distill.teacher import CACHE_DIR, SlimasrTeacher, TeacherCache
from slimasr.models import load_model
from slimasr.train import train_model
from tests.train.helpers import make_corpus, tiny_recipe


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("distill")
    data = make_corpus(root / "data", n_train=20)
    result = train_model(tiny_recipe(), data, root / "teacher", show_progress=False)
    assert result["dev_wer"] < 20.0  # a teacher worth distilling
    return data, root / "teacher"


def student_recipe(teacher_dir: Path, **loss: object) -> dict:
    recipe = tiny_recipe(epochs=4)
    recipe["model"]["config"]["rnn_hidden_sizes"] = [16]
    return {**recipe, "teacher": {"path": str(teacher_dir)}, "loss": loss}


def test_distilled_student_learns_and_is_saved_without_projections(teacher, tmp_path) -> None:
    data, teacher_dir = teacher
    out = tmp_path / "student"
    result = distill_model(student_recipe(teacher_dir, ctc_weight=0.5, kd_weight=0.5,
                                          hidden_weight=0.3, pseudo_weight=0.2),
                           data, out, show_progress=False)
    losses = [r["train_loss"] for r in result["history"]]
    assert losses[-1] < losses[0]
    saved = load_file(str(out / "model.safetensors"))
    assert not any(k.startswith(("projector", "student.")) for k in saved)
    model = load_model(out)
    assert model.config.rnn_hidden_sizes == [16]
    assert result["params"] == sum(p.numel() for p in model.parameters())
    config = json.loads((out / "config.json").read_text())
    assert config["provenance"]["step"] == "distill"
    assert config["provenance"]["teacher"] == str(teacher_dir)
    # The student shares the teacher's front end (tokenizer, CMVN).
    assert (out / "tokenizer.json").read_text() == (teacher_dir / "tokenizer.json").read_text()
    assert (out / "cmvn.json").read_text() == (teacher_dir / "cmvn.json").read_text()
    assert result["pseudo_labels_kept"]["of"] == 20


def test_cache_holds_the_teachers_posteriors(teacher, tmp_path) -> None:
    data, teacher_dir = teacher
    out = tmp_path / "student"
    distill_model({**student_recipe(teacher_dir, ctc_weight=0.0, kd_weight=1.0),
                   "teacher": {"path": str(teacher_dir), "top_k": 64}},
                  data, out, show_progress=False, overrides=["train.epochs=1"])
    cache = TeacherCache.load(out / CACHE_DIR)
    assert len(cache.transcripts) == 20
    # With k >= V the cache is the teacher's exact distribution, rounded to fp16, on the features
    # the student trains on (the stored, lilcom-compressed ones: on-the-fly features differ from
    # them by up to 2**-6 per bin, which is not the cache's error).
    t = SlimasrTeacher(teacher_dir)
    from slimasr.data.dataset import AsrDataset
    from slimasr.data.cache import feature_cache_dir, feature_cuts

    feats = t.frontend.features
    cuts = feature_cuts(data, "train", feats, feature_cache_dir(data, feats), show_progress=False)
    ds = AsrDataset(t.frontend.tokenizer, t.frontend.normalize, feats, t.frontend.cmvn, None,
                    train=False, on_the_fly=False)
    batch = ds[cuts.subset(first=2).to_eager()]
    logp, lens, _ = t.forward_features(batch["features"], batch["feature_lens"])
    dense, dense_lens = cache.dense(batch["cut_ids"], logp.shape[1])
    assert dense_lens.tolist() == lens.tolist()
    for i, n in enumerate(lens.tolist()):
        # fp16 keeps 11 significant bits: rounding is within 2**-11 of the value; 2**-10 leaves
        # room for float32 differences from another batch shape, nothing more.
        torch.testing.assert_close(dense[i, :n], logp[i, :n], atol=1e-5, rtol=2**-10)


def test_student_cut_down_from_the_teacher_keeps_its_weights(teacher, tmp_path) -> None:
    data, teacher_dir = teacher
    out = tmp_path / "student"
    recipe = {**student_recipe(teacher_dir, ctc_weight=1.0, kd_weight=1.0),
              "student": {"init": "teacher", "layers": 1, "width": 0.5, "round_to": 8}}
    # (the tiny teacher has one recurrent layer of 32: half of it is 16)
    distill_model(recipe, data, out, show_progress=False, overrides=["train.epochs=1"])
    init = load_model(out / "student_init")
    assert init.config.rnn_hidden_sizes == [16]
    t = load_model(teacher_dir)
    # The first conv layer's kept channels are copies of teacher channels.
    tw, sw = t.subsample.convs[0].weight, init.subsample.convs[0].weight
    assert all(any(torch.equal(row, trow) for trow in tw) for row in sw)


def test_unlabelled_audio_gets_teacher_transcripts(teacher, tmp_path) -> None:
    data, teacher_dir = teacher
    from slimasr.data.manifests import read_split

    cuts = read_split(data, "dev").subset(first=5).to_eager()
    unl = CutSet.from_cuts(c.with_id(f"unl-{c.id}").drop_supervisions() if hasattr(c, "drop_supervisions")
                           else c for c in cuts)
    manifest = tmp_path / "unl_cuts.jsonl.gz"
    unl.to_file(manifest)
    out = tmp_path / "student"
    result = distill_model({**student_recipe(teacher_dir, ctc_weight=1.0, pseudo_weight=1.0),
                            "unlabelled": [str(manifest)]},
                           data, out, show_progress=False, overrides=["train.epochs=1"])
    cache = TeacherCache.load(out / CACHE_DIR)
    assert {f"unl-{c.id}" for c in cuts} <= set(cache.transcripts)
    assert result["train_cuts"] > 20  # unlabelled cuts with a transcript joined the training set


def test_cli_names_a_missing_teacher(tmp_path, capsys) -> None:
    code = main(["distill", "--teacher", str(tmp_path / "nope"), "--data", str(tmp_path),
                 "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "nope" in err[0] and "config.json" in err[0]


def test_online_teacher_at_another_frame_rate(teacher, tmp_path) -> None:
    """A x4 student learns from the x2 teacher run online (no cache): posteriors are pooled."""
    data, teacher_dir = teacher
    recipe = student_recipe(teacher_dir, ctc_weight=0.5, kd_weight=0.5, hidden_weight=0.5)
    recipe["model"]["config"]["subsampling_strides"] = [[2, 2], [2, 2]]
    recipe["teacher"]["cache"] = False
    result = distill_model(recipe, data, tmp_path / "student", show_progress=False)
    assert not (tmp_path / "student" / CACHE_DIR).exists()
    assert load_model(tmp_path / "student").subsampling == 4
    losses = [r["train_loss"] for r in result["history"]]
    assert losses[-1] < losses[0]


def test_identity_projections_start_a_same_architecture_student_matched(teacher) -> None:
    """loss.hidden_init=identity: a student with the teacher's architecture and weights (a sparse
    or fine-tuned copy) starts with hidden loss 0; a narrower student is refused in one line."""
    from slimasr.distill.config import load_distill_recipe
    from slimasr.distill.losses import hidden_loss
    from slimasr.distill.run import _hidden_setup
    from slimasr.errors import ConfigError
    from slimasr.models import build_model

    data, teacher_dir = teacher
    t = SlimasrTeacher(teacher_dir)
    same = {**tiny_recipe(), "teacher": {"path": str(teacher_dir)}}  # the teacher's architecture
    recipe = load_distill_recipe({**same, "loss": {"hidden_weight": 1.0, "hidden_init": "identity"}})
    student = load_model(teacher_dir)
    pairs, projector = _hidden_setup(recipe, student, t)
    x, lens = torch.randn(2, 40, recipe.features.num_mel_bins), torch.tensor([40, 31])
    with torch.no_grad():
        _, out_lens, s_hidden = student.eval().forward_hidden(x, lens)
        t_hidden = t.forward_features(x, lens, hidden=True)[2]
        projected = projector([s_hidden[s] for s, _ in pairs])
    assert pairs and all(hidden_loss(h, t_hidden[j], out_lens).item() == pytest.approx(0.0, abs=1e-6)
                         for h, (_, j) in zip(projected, pairs))
    random = load_distill_recipe({**same, "loss": {"hidden_weight": 1.0}})
    assert not torch.equal(_hidden_setup(random, student, t)[1].proj[0].weight, projector.proj[0].weight)
    narrow = student_recipe(teacher_dir, hidden_weight=1.0, hidden_init="identity")
    small = build_model("crnn", narrow["model"]["config"], vocab_size=student.head.out_features)
    with pytest.raises(ConfigError, match="loss.hidden_init=identity: .*equal dims"):
        _hidden_setup(load_distill_recipe(narrow), small, t)


@pytest.mark.parametrize("loss, cache, warp", [({"kd_weight": 0.5}, True, 0), ({"kd_weight": 0.5}, False, 40),
                                               ({"hidden_weight": 0.5}, True, 40),
                                               ({"pseudo_weight": 0.5}, True, 40), ({}, True, 40)])
def test_time_warp_is_off_only_against_cached_posteriors(teacher, loss, cache, warp) -> None:
    """SpecAugment's time warp moves student frames against the cached (unwarped) posteriors; an
    online teacher reads the same warped features."""
    from rich.console import Console

    from slimasr.distill.config import load_distill_recipe
    from slimasr.distill.run import _no_time_warp_with_frame_targets

    recipe = load_distill_recipe({"teacher": {"path": str(teacher[1]), "cache": cache},
                                  "augment": {"time_warp": 40}, "loss": {"ctc_weight": 1.0, **loss}})
    _no_time_warp_with_frame_targets(recipe, Console(quiet=True))
    assert recipe.augment.time_warp == warp
    assert recipe.augment.num_time_masks > 0  # masks keep frames in place and stay on


def test_student_preset_conflicting_with_init_teacher_is_one_line_error(tmp_path, capsys) -> None:
    """`--student NAME` used to be silently ignored when the recipe cuts the student from the
    teacher (student.init: teacher)."""
    from slimasr.distill.config import load_distill_recipe

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "distill_crnn_student.yaml"
    code = main(["distill", "--teacher", str(tmp_path / "t"), "--student", "crnn_student",
                 "--config", str(recipe), "--data", str(tmp_path), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("error: model.preset=crnn_student: has no effect while student.init "
                             "is teacher")
    assert not (tmp_path / "s").exists()
    chosen = load_distill_recipe(recipe, ["model.preset=crnn_student", "student.init=scratch"])
    assert chosen.model.preset == "crnn_student"  # with init scratch the preset is the student


def test_teacher_with_nan_weights_is_one_line_error(teacher, tmp_path, capsys) -> None:
    """A NaN teacher used to end distillation in a traceback."""
    import shutil

    from safetensors.torch import save_file

    data, teacher_dir = teacher
    broken = tmp_path / "teacher"
    shutil.copytree(teacher_dir, broken)
    weights = load_file(broken / "model.safetensors")
    weights["head.weight"][0, 0] = float("nan")
    save_file(weights, broken / "model.safetensors")
    code = main(["distill", "--teacher", str(broken), "--data", str(data), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1] == (
        f"error: {broken / 'model.safetensors'}: tensor head.weight holds 1 NaN/inf values of "
        f"{weights['head.weight'].numel()} (a diverged or damaged model)")
    assert not any(line.startswith("Traceback") for line in err)


def test_a_run_that_fails_before_its_first_checkpoint_keeps_only_a_complete_teacher_cache(
        teacher, tmp_path, monkeypatch) -> None:
    """A distill that failed before its first checkpoint left half a model directory (tokenizer,
    CMVN, created student, recipe); the teacher cache, complete and expensive, is worth keeping."""
    from slimasr.distill import run as distill_run
    from slimasr.distill.teacher import META

    data, teacher_dir = teacher
    recipe = student_recipe(teacher_dir, ctc_weight=0.5, kd_weight=0.5)

    def fail(*args, **kwargs):
        raise RuntimeError("stopped")

    monkeypatch.setattr(distill_run.DistillTrainer, "fit", fail)
    out = tmp_path / "student"
    with pytest.raises(RuntimeError, match="stopped"):
        distill_model(recipe, data, out, show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == [CACHE_DIR]
    assert len(TeacherCache.load(out / CACHE_DIR).transcripts) == 20 and (out / CACHE_DIR / META).is_file()

    monkeypatch.setattr(distill_run, "fill_cache", fail)  # failing while the cache is computed
    other = tmp_path / "other"
    with pytest.raises(RuntimeError, match="stopped"):
        distill_model(recipe, data, other, show_progress=False)
    assert not other.exists()


# ---- soft labels: unlabelled audio, delayed KD, blank selection, ensembles, another family ----


def _unlabelled_manifest(data: Path, out: Path) -> Path:
    """Five dev cuts without supervisions (audio as `corpus synth --unlabelled` writes it)."""
    from slimasr.data.manifests import read_split

    cuts = read_split(data, "dev").subset(first=5).to_eager()
    CutSet.from_cuts(c.with_id(f"unl-{c.id}").drop_supervisions() for c in cuts).to_file(out)
    return out


@pytest.fixture(scope="module")
def plain_kd(teacher, tmp_path_factory) -> dict:
    """One epoch of KD 0.5 + CTC 0.5 on the labelled cuts alone."""
    data, teacher_dir = teacher
    return distill_model(student_recipe(teacher_dir, ctc_weight=0.5, kd_weight=0.5), data,
                         tmp_path_factory.mktemp("plain") / "s", show_progress=False,
                         overrides=["train.epochs=1"])


def test_unlabelled_cuts_join_frame_kd_but_not_reference_ctc(teacher, plain_kd, tmp_path) -> None:
    data, teacher_dir = teacher
    manifest = _unlabelled_manifest(data, tmp_path / "unl_cuts.jsonl.gz")
    result = distill_model({**student_recipe(teacher_dir, ctc_weight=0.5, kd_weight=0.5),
                            "unlabelled": [str(manifest)]},
                           data, tmp_path / "s", show_progress=False, overrides=["train.epochs=1"])
    base, counts = plain_kd["loss_counts"], result["loss_counts"]
    assert base["kd_frames_unlabelled"] == 0 and base["ctc_utterances"] == 20
    assert result["train_cuts"] == 25
    assert counts["ctc_utterances"] == 20  # reference CTC: the labelled cuts only
    assert counts["kd_frames_unlabelled"] > 0  # the unlabelled cuts' frames are in the KD term
    assert counts["kd_frames"] - counts["kd_frames_unlabelled"] == base["kd_frames"]


def test_delayed_kd_and_symmetric_blank_selection_in_a_run(teacher, plain_kd, tmp_path) -> None:
    data, teacher_dir = teacher
    result = distill_model(student_recipe(teacher_dir, ctc_weight=0.5, kd_weight=0.5, kd_delay=2,
                                          blank_selection="symmetric", blank_keep=0.25),
                           data, tmp_path / "s", show_progress=False, overrides=["train.epochs=1"])
    # each of the 20 cuts loses its first 2 frames to the delay
    assert result["loss_counts"]["kd_frames"] == plain_kd["loss_counts"]["kd_frames"] - 2 * 20
    assert result["loss"]["kd_delay"] == 2 and result["loss"]["blank_selection"] == "symmetric"
    started = distill_model(student_recipe(teacher_dir, ctc_weight=0.5, kd_weight=0.5, kd_delay=2,
                                           blank_start=5), data, tmp_path / "k", show_progress=False,
                            overrides=["train.epochs=1"])
    # and 5 with blank_start = 5: the first frames are blank (CTC) and without a KD target
    assert started["loss_counts"]["kd_frames"] == plain_kd["loss_counts"]["kd_frames"] - 5 * 20
    assert started["loss"]["blank_start"] == 5
    assert all(math.isfinite(r["train_loss"]) for r in started["history"])
    skipped = distill_model(student_recipe(teacher_dir, ctc_weight=0.5, kd_weight=0.5, kd_delay=2,
                                           kd_skip_first_word=True), data, tmp_path / "w",
                            show_progress=False, overrides=["train.epochs=1"])
    # the teacher's first word is left to CTC: fewer KD frames than the delay alone leaves
    assert 0 < skipped["loss_counts"]["kd_frames"] < result["loss_counts"]["kd_frames"]


def test_dev_kd_delay_of_a_model_against_itself_is_zero(teacher) -> None:
    from slimasr.distill.delay import dev_kd_delay, spike_lag

    data, teacher_dir = teacher
    best, counts = dev_kd_delay(teacher_dir, teacher_dir, data, max_delay=3)
    assert best == 0 and counts[0] > 0 and counts[0] == max(counts)
    assert (best, counts) == spike_lag(teacher_dir, teacher_dir, data, "dev", max_delay=3)
    best, counts = spike_lag(teacher_dir, teacher_dir, data, "train", max_delay=3)  # any split
    assert best == 0 and counts[0] > 0 and counts[0] == max(counts)


def _second_teacher(teacher_dir: Path, out: Path) -> Path:
    """A copy of the teacher with another output layer (its posteriors differ)."""
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(teacher_dir, out)
    weights = load_file(out / "model.safetensors")
    weights["head.weight"] = weights["head.weight"] * 0.5
    save_file(weights, out / "model.safetensors")
    return out


def test_ensemble_averages_the_teachers_probabilities(teacher, tmp_path) -> None:
    from slimasr.distill.teacher import EnsembleTeacher

    data, teacher_dir = teacher
    a, b = SlimasrTeacher(teacher_dir), SlimasrTeacher(_second_teacher(teacher_dir, tmp_path / "b"))
    x, lens = torch.randn(2, 50, 40), torch.tensor([50, 31])
    la, lens_a, _ = a.forward_features(x, lens)
    lb, _, _ = b.forward_features(x, lens)
    got, got_lens, _ = EnsembleTeacher([a, b]).forward_features(x, lens)
    assert torch.equal(got_lens, lens_a)
    torch.testing.assert_close(got, ((la.exp() + lb.exp()) / 2).log())
    assert not torch.allclose(la, lb, atol=1e-2)  # the members really differ


def test_distill_from_an_ensemble_of_two_teachers(teacher, tmp_path) -> None:
    data, teacher_dir = teacher
    other = _second_teacher(teacher_dir, tmp_path / "b")
    recipe = student_recipe(teacher_dir, ctc_weight=0.5, kd_weight=0.5)
    del recipe["teacher"]
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    code = main(["distill", "--teacher", str(teacher_dir), "--teacher", str(other), "--data",
                 str(data), "--out", str(tmp_path / "s"), "--config", str(tmp_path / "recipe.json"),
                 "train.epochs=1"])
    assert code == 0
    config = json.loads((tmp_path / "s" / "training.json").read_text())
    assert config["teachers"] == [str(teacher_dir), str(other)]


def test_ensemble_teachers_with_other_tokens_are_one_line_error(teacher, tmp_path, capsys) -> None:
    import shutil

    data, teacher_dir = teacher
    other = tmp_path / "other"
    shutil.copytree(teacher_dir, other)
    info = json.loads((other / "tokenizer.json").read_text())
    tokens = info["tokens"]
    tokens[1], tokens[2] = tokens[2], tokens[1]
    (other / "tokenizer.json").write_text(json.dumps(info))
    code = main(["distill", "--teacher", str(teacher_dir), "--teacher", str(other), "--data",
                 str(data), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith(f"error: {other}: ensemble teachers must share one tokenizer")
    assert not (tmp_path / "s").exists()


def test_dnn_student_learns_from_a_crnn_teacher(teacher, tmp_path) -> None:
    """Another family: no weights to copy, soft labels (and CTC) only."""
    data, teacher_dir = teacher
    recipe = student_recipe(teacher_dir, ctc_weight=0.5, kd_weight=0.5)
    recipe["model"] = {"preset": None, "architecture": "dnn", "config": {
        "num_features": 40, "context_left": 3, "context_right": 3, "stride": 2,
        "hidden_sizes": [48, 48], "dropout": 0.0}}
    result = distill_model(recipe, data, tmp_path / "s", show_progress=False,
                           overrides=["train.epochs=6"])
    assert load_model(tmp_path / "s").config.hidden_sizes == [48, 48]
    losses = [r["train_loss"] for r in result["history"]]
    assert losses[-1] < 0.7 * losses[0]
    assert result["loss_counts"]["kd_frames"] > 0


def test_ensemble_member_with_another_cmvn_reads_its_own_normalisation(teacher, tmp_path) -> None:
    from slimasr.distill.teacher import EnsembleTeacher

    data, teacher_dir = teacher
    b_dir = _second_teacher(teacher_dir, tmp_path / "b")
    cmvn = json.loads((b_dir / "cmvn.json").read_text())
    cmvn["mean"] = [m + 1.0 for m in cmvn["mean"]]
    cmvn["std"] = [s * 2.0 for s in cmvn["std"]]
    (b_dir / "cmvn.json").write_text(json.dumps(cmvn))
    a, b = SlimasrTeacher(teacher_dir), SlimasrTeacher(b_dir)
    raw, lens = torch.randn(1, 40, 40) * 3, torch.tensor([40])
    ca, cb = a.frontend.cmvn, b.frontend.cmvn
    la, _, _ = a.forward_features(ca(raw), lens)
    lb, _, _ = b.forward_features(cb(raw), lens)
    got, _, _ = EnsembleTeacher([a, b]).forward_features(ca(raw), lens)
    torch.testing.assert_close(got, ((la.exp() + lb.exp()) / 2).log(), atol=1e-5, rtol=1e-4)


def test_ensemble_paths_fill_in_and_must_start_with_the_teacher_path() -> None:
    from slimasr.distill.config import load_distill_recipe
    from slimasr.errors import ConfigError

    assert load_distill_recipe({"teacher": {"paths": ["a", "b"]}}).teacher.path == "a"
    with pytest.raises(ConfigError, match="must be the first of teacher.paths"):
        load_distill_recipe({"teacher": {"path": "b", "paths": ["a", "b"]}})


def test_kd_skip_first_word_needs_a_word_separator_token() -> None:
    """The first word's end is found by the separator's spikes: a character vocabulary without
    one is refused in one line, not with a ValueError from deep inside a batch."""
    from types import SimpleNamespace

    from slimasr.distill.run import DistillTrainer
    from slimasr.errors import ConfigError
    from slimasr.text.tokenizer import CharTokenizer

    boundaries = DistillTrainer._word_boundaries.func
    assert boundaries(SimpleNamespace(tokenizer=CharTokenizer())) == ([1], 1)  # " " is token 1
    with pytest.raises(ConfigError, match="no word separator"):
        boundaries(SimpleNamespace(tokenizer=CharTokenizer(tokens=["<blk>", "a", "b"])))
