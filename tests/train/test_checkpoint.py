from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from slimasr.errors import DataError
from slimasr.train.checkpoint import load_checkpoint, save_checkpoint


def make():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.98))
    return model, opt


def step(model, opt):
    loss = model(torch.randn(5, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    model, opt = make()
    for _ in range(3):
        step(model, opt)
    save_checkpoint(tmp_path / "ckpt", model, opt, {"step": 3, "best": {"wer": 0.5}})
    expected = [step(model, opt) for _ in range(3)], random.random(), np.random.rand()

    model2, opt2 = make()
    state = load_checkpoint(tmp_path / "ckpt", model2, opt2)
    assert state == {"step": 3, "best": {"wer": 0.5}}
    resumed = [step(model2, opt2) for _ in range(3)], random.random(), np.random.rand()
    assert resumed == expected
    assert opt2.param_groups[0]["betas"] == (0.9, 0.98)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_overwriting_keeps_one_complete_checkpoint(tmp_path):
    model, opt = make()
    save_checkpoint(tmp_path / "ckpt", model, opt, {"step": 1})
    step(model, opt)
    save_checkpoint(tmp_path / "ckpt", model, opt, {"step": 2})
    assert load_checkpoint(tmp_path / "ckpt", make()[0], restore_rng=False) == {"step": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_mismatched_model_is_a_one_line_error(tmp_path):
    model, opt = make()
    save_checkpoint(tmp_path / "ckpt", model, opt, {})
    other = torch.nn.Linear(4, 3)
    with pytest.raises(DataError, match="ckpt: unreadable or mismatched checkpoint") as e:
        load_checkpoint(tmp_path / "ckpt", other)
    assert "\n" not in str(e.value)
