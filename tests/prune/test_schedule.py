"""Sparsity while training: Zhu & Gupta's cubic schedule at chosen steps, a gradual pruner that
follows it with masks that only grow, and a tiny training run that ends at its sparsity and is
saved compactly."""

from __future__ import annotations

import contextlib
import json
from types import SimpleNamespace

import pytest
import torch

from slimasr.errors import ConfigError
from slimasr.models import load_model
from slimasr.prune.regularize import RegularizeConfig, Regularizer
from slimasr.prune.schedule import (
    GradualConfig,
    GradualPruner,
    KeptMasks,
    SparsityConfig,
    SparsitySummary,
    cubic_sparsity,
    is_pruning_step,
    step_callbacks,
)
from slimasr.prune.unstructured import masks_of, tensor_of
from slimasr.train import train_model
from slimasr.train.loop import TrainState, compute_loss
from tests.prune.helpers import random_model
from tests.train.helpers import make_corpus, tiny_recipe

FEATS, VOCAB = 8, 7


def test_cubic_schedule_at_chosen_steps():
    s = [cubic_sparsity(t, 0.0, 0.8, 100, 1000) for t in (0, 100, 350, 600, 1100, 5000)]
    assert s[:2] == [0.0, 0.0] and s[4:] == [0.8, 0.8]
    assert s[2] == pytest.approx(0.8 - 0.8 * 0.75 ** 3, abs=1e-15)  # 0.4625
    assert s[3] == pytest.approx(0.8 - 0.8 * 0.5 ** 3, abs=1e-15)  # 0.7
    assert cubic_sparsity(600, 0.2, 0.8, 100, 1000) == pytest.approx(0.8 - 0.6 * 0.125, abs=1e-15)


def test_pruning_happens_every_dt_from_t0_and_at_the_end_of_the_span():
    steps = [t for t in range(0, 1500) if is_pruning_step(t, 100, 1000, 300)]
    assert steps == [100, 400, 700, 1000, 1100]


def dnn():
    return random_model("dnn", dict(num_features=FEATS, context_left=1, context_right=1,
                                    hidden_sizes=[9, 7], dropout=0.0), VOCAB)


def batch(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"features": torch.randn(2, 20, FEATS, generator=gen), "feature_lens": torch.tensor([20, 15]),
            "targets": torch.tensor([[1, 2, 3], [4, 5, 0]]), "target_lens": torch.tensor([3, 2])}


def fake_trainer(model, total_steps: int = 40) -> SimpleNamespace:
    """What a callback reads of the Trainer: its optimizer, state (step, best) and schedule."""
    return SimpleNamespace(optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1),
                           state=TrainState(), schedule=SimpleNamespace(total_steps=total_steps))


def test_gradual_pruner_follows_the_schedule_with_masks_that_only_grow():
    model = dnn().train()
    cfg = GradualConfig(final=0.75, initial=0.25, start_step=4, span_steps=12, every_steps=4,
                        include=["layers.*"])
    pruner = GradualPruner(cfg, model)
    trainer = fake_trainer(model)
    assert pruner.names == ["layers.0.weight", "layers.1.weight"]
    assert all(bool(m.all()) for m in masks_of(model).values())  # attached at once, nothing masked yet
    previous = {n: m.clone() for n, m in masks_of(model).items()}
    seen = {}
    for step in range(1, 21):
        loss = compute_loss(model, batch(step), torch.device("cpu"), "mean", contextlib.nullcontext())
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
        trainer.state.step, trainer.state.best_wer = step, 50.0
        pruner.after_step(trainer)
        masks = masks_of(model)
        for name, mask in masks.items():
            assert not bool((mask & ~previous[name]).any()), f"step {step}: {name} regrew"
            assert not tensor_of(model, name)[~mask].any()
        if step in (4, 8, 12, 16):
            target = cubic_sparsity(step, 0.25, 0.75, 4, 12)
            seen[step] = target
            for name, mask in masks.items():
                assert int((~mask).sum()) == round(target * mask.numel()), (step, name)
            assert trainer.state.best_wer is None  # a denser model's validation is forgotten
        else:
            assert trainer.state.best_wer == 50.0
        previous = {n: m.clone() for n, m in masks.items()}
    assert seen == {4: 0.25, 8: pytest.approx(0.75 - 0.5 * (2 / 3) ** 3), 12: pytest.approx(0.75 - 0.5 / 27), 16: 0.75}
    sizes = [m.numel() for m in masks_of(model).values()]
    assert pruner.summary()["gradual"]["reached"] == 1 - sum(n - round(0.75 * n) for n in sizes) / sum(sizes)


def test_the_gradual_pruner_takes_the_biases_only_when_asked():
    names = GradualPruner(GradualConfig(final=0.5, include=["layers.*"]), dnn()).names
    assert names == ["layers.0.weight", "layers.1.weight"]
    model = dnn()
    pruner = GradualPruner(GradualConfig(final=0.5, start_step=1, span_steps=1, include=["layers.*"],
                                         biases=True), model)
    assert pruner.names == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    trainer = fake_trainer(model)
    trainer.state.step = 2  # t0 + n dt: the final sparsity
    pruner.after_step(trainer)
    assert pruner.last_target == 0.5
    for name in pruner.names:
        assert int((tensor_of(model, name) == 0).sum()) == round(0.5 * tensor_of(model, name).numel()), name


def test_without_a_span_the_schedule_ends_at_a_share_of_the_run():
    model = dnn()
    pruner = GradualPruner(GradualConfig(final=0.5, start_step=4, end_share=0.75), model)
    assert pruner.span(fake_trainer(model, total_steps=40)) == 30 - 4


def test_the_recipe_section_builds_its_callbacks_and_nothing_by_default():
    model = dnn()
    assert step_callbacks(SparsityConfig(), model) == [] and not masks_of(model)
    cfg = SparsityConfig(gradual=GradualConfig(final=0.5), keep_masks=True,
                         regularize=RegularizeConfig(kind="l1", strength=0.1))
    kinds = [type(c) for c in step_callbacks(cfg, model)]
    assert kinds == [KeptMasks, GradualPruner, Regularizer, SparsitySummary] and cfg.active
    with pytest.raises(ConfigError, match="initial <= final"):
        GradualConfig(final=0.3, initial=0.5)
    with pytest.raises(ConfigError, match="no prunable weight matches"):
        GradualPruner(GradualConfig(final=0.5, include=["nothing.*"]), model)


def test_gradual_pruning_in_a_tiny_training_run_ends_at_its_sparsity_saved_compactly(tmp_path):
    data = make_corpus(tmp_path / "data", n_train=12)
    overrides = ["sparsity.gradual.final=0.6", "sparsity.gradual.start_step=2", "sparsity.gradual.span_steps=6",
                 "sparsity.gradual.every_steps=2", "sparsity.gradual.exclude=[head.*]"]
    result = train_model(tiny_recipe(epochs=4), data, tmp_path / "m", overrides=overrides, show_progress=False)
    assert result["steps"] > 8  # the schedule ended (step 8) before training did
    sizes = [v["params"] for k, v in result["sparsity"]["layers"].items() if not k.startswith("head.")]
    assert result["gradual"]["reached"] == 1 - sum(n - round(0.6 * n) for n in sizes) / sum(sizes)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["sparse"] is True
    model = load_model(tmp_path / "m")  # the best model is one validated at the final sparsity
    layers = result["sparsity"]["layers"]
    for name, counts in layers.items():
        weight = tensor_of(model, name)
        zeros = int((weight == 0).sum())
        expected = 0 if name.startswith("head.") else round(0.6 * weight.numel())
        assert zeros == expected, name


def test_a_run_with_gradual_pruning_resumes_with_its_masks_exactly(tmp_path):
    """Stopped at step 5 (between two prunings) and resumed, the run ends with bitwise the weights
    of an uninterrupted one: the masks come back from the checkpoint."""
    data = make_corpus(tmp_path / "data", n_train=12)
    overrides = ["sparsity.gradual.final=0.6", "sparsity.gradual.start_step=2", "sparsity.gradual.span_steps=6",
                 "sparsity.gradual.every_steps=2"]
    whole = train_model(tiny_recipe(epochs=3), data, tmp_path / "whole", overrides=overrides, show_progress=False)
    train_model(tiny_recipe(epochs=3), data, tmp_path / "part", overrides=[*overrides, "train.max_steps=5"],
                show_progress=False)
    resumed = train_model(tiny_recipe(epochs=3), data, tmp_path / "part", overrides=overrides, resume=True,
                          show_progress=False)
    assert resumed["steps"] == whole["steps"] > 8
    assert resumed["weights_sha256"] == whole["weights_sha256"]
