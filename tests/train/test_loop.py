"""The training loop: a tiny over-fitting run end to end, NaN/inf safety, schedule, recipe."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console

from slimasr.data.dataset import AsrDataset
from slimasr.data.features import FeatureConfig, GlobalCmvn
from slimasr.data.manifests import read_split
from slimasr.decode import GreedyDecoder
from slimasr.errors import ConfigError, DataError
from slimasr.models import build_model, load_model, read_model_config
from slimasr.text import CharTokenizer
from slimasr.train import LrSchedule, load_frontend, load_recipe, lr_at, resolve_model, train_model
from slimasr.train import loop
from slimasr.train.distributed import DistInfo
from slimasr.train.logging import CSV_FIELDS
from slimasr.train.prepare import make_normalizer
from tests.train.helpers import make_corpus, tiny_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
EXTRA = {"x-empty": "!!!", "x-short": "lamp on fan off door"}  # one letter of audio each


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, list[int]]:
    """Over-fit 20 utterances (plus 2 unusable ones), injecting one NaN loss and one batch of
    non-finite gradients along the way."""
    root = tmp_path_factory.mktemp("overfit")
    data = make_corpus(root / "data", extra_train=EXTRA)
    calls = []
    original = loop.compute_loss

    def injecting(*args, **kwargs):
        loss = original(*args, **kwargs)
        calls.append(len(calls))
        if len(calls) == 3:
            return loss * float("nan")
        if len(calls) == 9:  # finite loss, NaN gradients: d sqrt(z)/dz at z = 0 is inf (x 0)
            p = next(args[0].parameters())
            return loss + 0.0 * torch.sqrt((p - p.detach()).sum())
        return loss

    mp = pytest.MonkeyPatch()
    mp.setattr(loop, "compute_loss", injecting)
    try:
        metrics = train_model(tiny_recipe(lr=1e-2), data, root / "model", show_progress=False)
    finally:
        mp.undo()
    return data, root / "model", metrics, calls


def test_overfits_twenty_utterances_to_zero_wer(trained) -> None:
    data, model_dir, metrics, calls = trained
    assert metrics["dev_wer"] == 0.0 and metrics["dev_utterances"] == 20
    history = metrics["history"]
    assert len(history) == 40 and history[-1]["train_loss"] < history[0]["train_loss"] / 50
    assert metrics["epochs"] == 40 and metrics["stop_reason"] == "epochs"
    # the saved model reproduces it: greedy decoding of every dev utterance is exact
    frontend = load_frontend(model_dir)
    model = load_model(model_dir)
    dataset = AsrDataset(frontend.tokenizer, frontend.normalize, frontend.features, frontend.cmvn,
                         None, train=False)
    batch = dataset[read_split(data, "dev").to_eager()]
    with torch.no_grad():
        log_probs, lens = model(batch["features"], batch["feature_lens"])
    assert GreedyDecoder(frontend.tokenizer.tokens).decode_batch(log_probs, lens) == batch["texts"]


def test_bad_batches_are_skipped_counted_and_harmless(trained) -> None:
    _, _, metrics, calls = trained
    assert metrics["skipped_batches"] == {"nonfinite_loss": 1, "nonfinite_grad": 1}
    assert metrics["steps"] == len(calls) - 2  # every batch but the two bad ones stepped
    assert metrics["dev_wer"] == 0.0


def test_unusable_cuts_are_filtered_and_counted(trained) -> None:
    _, _, metrics, _ = trained
    train = metrics["skipped_cuts"]["train"]
    assert (train["checked"], train["kept"]) == (22, 20)
    assert train["skipped"] == {"empty_transcript": 1, "too_short": 1}
    assert metrics["train_cuts"] == 20


def test_model_directory_contents(trained) -> None:
    data, model_dir, metrics, _ = trained
    for name in ("config.json", "model.safetensors", "tokenizer.json", "cmvn.json",
                 "training.json", "train_log.csv", "checkpoints/last/state.json",
                 "checkpoints/best/model.safetensors", "checkpoints/recipe.json"):
        assert (model_dir / name).is_file(), name
    config = read_model_config(model_dir)
    assert config["architecture"] == "crnn" and config["cmvn"] == "cmvn.json"
    assert config["tokenizer"]["kind"] == "char"
    assert config["features"] == {**config["features"], "num_mel_bins": 40, "dither": 0.0}
    prov = config["provenance"]
    assert prov["data_dir"] == str(data.resolve()) and prov["epochs"] == 40
    assert prov["best_dev_wer"] == 0.0 and prov["recipe"]["train"]["lr"] == 1e-2
    saved = json.loads((model_dir / "training.json").read_text())
    assert saved == {k: v for k, v in metrics.items() if k not in ("model_dir", "weights_sha256")}
    frontend = load_frontend(model_dir)
    assert frontend.features == FeatureConfig(num_mel_bins=40, dither=0.0)
    assert torch.equal(frontend.cmvn.mean, GlobalCmvn.load(model_dir / "cmvn.json").mean)
    assert frontend.normalize("Lamp ON!") == "lamp on"


def test_train_log_csv(trained) -> None:
    _, model_dir, metrics, _ = trained
    with (model_dir / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_FIELDS
    steps = [int(r["step"]) for r in rows]
    assert steps == list(range(5, metrics["steps"] + 1, 5))  # log_every_steps=5
    assert all(math.isfinite(float(r[k])) for r in rows for k in CSV_FIELDS)
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])


def test_output_folder_is_never_overwritten(trained, tmp_path) -> None:
    data, model_dir, _, _ = trained
    before = (model_dir / "model.safetensors").read_bytes()
    with pytest.raises(DataError, match="--resume"):
        train_model(tiny_recipe(), data, model_dir, show_progress=False)
    assert (model_dir / "model.safetensors").read_bytes() == before


def test_early_stopping_and_time_budget(trained, tmp_path) -> None:
    data = trained[0]
    # On the all-blank plateau (100% WER) patience does not count: all 4 epochs run.
    plateau = train_model(tiny_recipe(lr=1e-7, epochs=4, early_stop_patience=2), data,
                          tmp_path / "plateau", show_progress=False)
    assert plateau["stop_reason"] == "epochs" and plateau["epochs"] == 4
    stuck = train_model(tiny_recipe(lr=1e-7, epochs=10, early_stop_patience=2,
                                    early_stop_below_wer=101.0), data,
                        tmp_path / "stuck", show_progress=False)
    assert stuck["stop_reason"] == "early_stop" and stuck["epochs"] == 3  # 1 best + 2 worse
    assert stuck["best_epoch"] == 0 and [r["dev_wer"] for r in stuck["history"]] == [100.0] * 3
    timed = train_model(tiny_recipe(epochs=10, max_minutes=1e-6), data, tmp_path / "timed",
                        show_progress=False)
    assert timed["stop_reason"] == "max_minutes" and timed["steps"] == 1
    assert timed["history"][-1]["partial_epoch"] is True


def test_history_records_the_lr_applied_under_a_clock(trained, tmp_path, monkeypatch) -> None:
    """Under ``max_minutes`` the cosine follows the clock; each epoch's row must show the lr its
    last step ran with, not the lr the step count alone would give."""
    monkeypatch.setattr(loop.Trainer, "time_fraction", lambda self: 0.5)
    result = train_model(tiny_recipe(epochs=2, max_minutes=60.0, warmup_steps=1, decay_steps=10_000),
                         trained[0], tmp_path / "clock", show_progress=False)
    peak, ratio = 5e-3, load_recipe(tiny_recipe()).train.min_lr_ratio
    floor = peak * ratio
    assert len(result["history"]) == 2
    for row in result["history"]:
        by_steps = lr_at(row["step"] - 1, "cosine", peak, 1, 10_000, ratio, 0.0)
        assert by_steps > peak * 0.99  # the step count alone says: barely decayed
        assert row["lr"] == pytest.approx(floor + (peak - floor) * 0.5)  # the clock: half-way


def _trainer(tmp_path: Path, overrides: tuple[str, ...] = ()) -> loop.Trainer:
    recipe = load_recipe(tiny_recipe(), overrides)
    tokenizer = CharTokenizer()
    name, cfg = resolve_model(recipe.model)
    torch.manual_seed(0)
    model = build_model(name, cfg, vocab_size=tokenizer.vocab_size)
    return loop.Trainer(model, recipe, DistInfo(), tokenizer, make_normalizer(recipe.normalizer),
                        tmp_path, Console(quiet=True), show_progress=False)


def _batch(nan: bool = False) -> dict:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 60, 40, generator=g)
    if nan:
        features[1, 7, 3] = float("nan")
    return {"features": features, "feature_lens": torch.tensor([60, 50]),
            "targets": torch.tensor([[3, 4, 5], [6, 7, 0]]), "target_lens": torch.tensor([3, 2])}


def _snapshot(trainer: loop.Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_train_step_skips_nan_loss_and_nonfinite_gradients(tmp_path) -> None:
    trainer = _trainer(tmp_path)
    before = _snapshot(trainer)
    assert trainer.train_step(_batch(nan=True)) is None
    p = next(trainer.model.parameters())
    hook = p.register_hook(lambda g: g * float("inf"))
    assert trainer.train_step(_batch()) is None
    hook.remove()
    assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(trainer)))
    assert trainer.optimizer.state == {} and trainer.state.step == 0
    assert trainer.state.skipped == {"nonfinite_loss": 1, "nonfinite_grad": 1}
    norm = trainer.train_step(_batch())
    assert norm is not None and math.isfinite(norm) and trainer.state.step == 1
    assert not all(torch.equal(a, b) for a, b in zip(before, _snapshot(trainer)))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_augmentation_starts_at_augment_start_epoch(trained, tmp_path) -> None:
    data = trained[0]
    trainer = _trainer(tmp_path, ("augment.spec_augment=true", "train.augment_start_epoch=2"))
    cuts = read_split(data, "train")
    augmented, _ = trainer.loaders(cuts, cuts, None)
    assert augmented.dataset.spec_augment is not None
    assert trainer.plain_loader.dataset.spec_augment is None
    assert trainer.plain_loader.sampler is trainer.sampler is augmented.sampler


def test_ctc_loss_reductions() -> None:
    log_probs = torch.randn(2, 10, 5).log_softmax(-1)
    lens, targets, target_lens = torch.tensor([10, 8]), torch.tensor([[1, 2, 3], [4, 0, 0]]), torch.tensor([3, 1])
    per_utt = loop.ctc_loss(log_probs, lens, targets, target_lens)
    expected = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, lens, target_lens,
                                            reduction="mean", zero_infinity=True)
    assert torch.allclose(loop.reduce_loss(per_utt, target_lens, "mean"), expected)
    assert torch.allclose(loop.reduce_loss(per_utt, target_lens, "sum"), per_utt.sum() / 2)
    impossible = loop.ctc_loss(log_probs[:1, :2], torch.tensor([2]), targets[:1], target_lens[:1])
    assert impossible.tolist() == [0.0]  # zero_infinity: too few frames for 3 labels


def test_schedules() -> None:
    kw = dict(peak_lr=1.0, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [lr_at(s, "cosine", **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(9, "cosine", **kw) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert lr_at(14, "cosine", **kw) == pytest.approx(0.1) == lr_at(100, "cosine", **kw)
    assert lr_at(4, "cosine", **kw, time_fraction=0.5) == pytest.approx(0.55)  # the clock leads
    assert lr_at(15, "inverse_sqrt", **kw) == pytest.approx(0.5)  # sqrt(4 / 16)
    assert lr_at(99, "constant", **kw) == 1.0
    schedule = LrSchedule("cosine", 1.0, 4, 14, 0.1)
    resumed = LrSchedule("cosine", 2.0, 0, 0, 0.0)
    resumed.load_state_dict(json.loads(json.dumps(schedule.state_dict())))
    assert [resumed.lr(s) for s in range(20)] == [schedule.lr(s) for s in range(20)]
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    assert schedule.apply(opt, 1) == 0.5 and opt.param_groups[0]["lr"] == 0.5


def test_recipes_load_and_reject_unknown_keys(tmp_path) -> None:
    for path in sorted(RECIPES.glob("train_*.yaml")):
        name, _ = resolve_model(load_recipe(path).model)
        assert name in ("crnn", "conformer", "dnn"), path
    recipe = load_recipe(RECIPES / "train_crnn_teacher.yaml",
                         ["train.lr=3e-4", "model.config.rnn_hidden_sizes=[64]"])
    assert recipe.train.lr == 3e-4
    assert resolve_model(recipe.model)[1].rnn_hidden_sizes == [64]
    assert resolve_model(load_recipe(None, ["model.preset=crnn_student"]).model)[1].rnn_hidden_sizes == [128, 128]
    with pytest.raises(ConfigError, match=r"train: unknown key\(s\) learning_rate"):
        load_recipe(None, ["train.learning_rate=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {preset: nowhere.yaml}\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        resolve_model(load_recipe(bad).model)
    (tmp_path / "p.yaml").write_text("architecture: dnn\nmodel: {hidden_sizes: [7]}\n")
    (tmp_path / "r.yaml").write_text("model: {preset: p.yaml, config: {stride: 3}}\n")
    name, cfg = resolve_model(load_recipe(tmp_path / "r.yaml").model)  # relative to the recipe
    assert (name, cfg.hidden_sizes, cfg.stride) == ("dnn", [7], 3)


def _fail_at_model(*args, **kwargs):
    raise ConfigError("model: cannot be built (injected)")


def _fail_at_first_step(*args, **kwargs):
    raise RuntimeError("first step failed (injected)")


@pytest.mark.parametrize("where, fail", [("resolve_model", _fail_at_model),
                                         ("compute_loss", _fail_at_first_step)])
@pytest.mark.parametrize("had_folder", [False, True])
def test_a_failed_start_leaves_no_half_model_dir(trained, tmp_path, monkeypatch, where, fail,
                                                 had_folder) -> None:
    """Failing after the tokenizer, CMVN and recipe are written (or in the first steps), before
    any checkpoint: what this run wrote goes, what was there before stays."""
    out = tmp_path / "model"
    if had_folder:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(loop, where, fail)
    with pytest.raises((ConfigError, RuntimeError), match="injected"):
        train_model(tiny_recipe(), trained[0], out, show_progress=False)
    if had_folder:
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
    else:
        assert not out.exists()


@pytest.mark.parametrize("precompute", [True, False])
def test_nan_audio_is_skipped_and_counted_and_an_untrained_model_is_flagged(tmp_path, capsys,
                                                                           precompute) -> None:
    """A file with NaN samples used to be trained on (a NaN loss skipped its whole batch) and
    scored on dev; a model stopped after 2 steps used to be saved as if it had learned. Both
    the stored-feature path and the features-on-the-fly path skip and count the cut."""
    import soundfile as sf

    from tests.data.fixtures import BAD_SAMPLES, write_bad_audio

    data = make_corpus(tmp_path / "data", n_train=6)
    spoiled = [data / "audio" / "train-002.wav", data / "audio" / "dev-004.wav"]
    for path in spoiled:
        write_bad_audio(path, "nan", audio=sf.read(path, dtype="float32")[0])
    out = tmp_path / "model"
    result = train_model(tiny_recipe(epochs=1, max_steps=2, precompute_features=precompute),
                         data, out, show_progress=False)
    for split, path in zip(("train", "dev"), spoiled):
        report = result["skipped_cuts"][split]
        assert report["skipped"] == {"bad_audio": 1} and report["kept"] == 5, split
        assert report["examples"] == [f"{path}: {BAD_SAMPLES['nan']}"]
    assert result["skipped_batches"] == {"nonfinite_loss": 0, "nonfinite_grad": 0}
    assert result["dev_utterances"] == 5 and math.isfinite(result["dev_loss"])
    assert result["learned_nothing"] is True
    assert json.loads((out / "training.json").read_text())["learned_nothing"] is True
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "learned nothing" in line] == [
        f"warning: {out}: learned nothing: dev WER 100.0% is no better than writing nothing; "
        "train longer (train.epochs)"]


def test_learned_nothing_is_the_all_blank_plateau_or_no_better() -> None:
    assert loop.learned_nothing({"dev_wer": 100.0, "dev_hyp_words": 0}) == "every dev hypothesis is empty"
    assert loop.learned_nothing({"dev_wer": 130.0, "dev_hyp_words": 9}) == (
        "dev WER 130.0% is no better than writing nothing")
    assert loop.learned_nothing({"dev_wer": 99.5, "dev_hyp_words": 9}) is None
    assert loop.learned_nothing({"dev_wer": 0.0}) is None  # a row from before dev_hyp_words
