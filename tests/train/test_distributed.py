"""Two CPU processes under torchrun (gloo): sharded batches, all-reduced metrics, equal weights."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from slimasr.data.dataset import make_dataloader
from slimasr.data.manifests import read_split
from tests.train.helpers import make_corpus, tiny_recipe

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 30
TIMEOUT_S = 300


def _batches_per_epoch(data: Path, max_duration: float) -> list[int]:
    """Batches a single process draws in each epoch (sorted first epoch, then buckets)."""
    cuts = read_split(data, "train")
    _, sampler = make_dataloader(cuts, None, max_duration, shuffle=True, seed=0,
                                 sort_first_epoch=True)
    counts = []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        counts.append(sum(1 for _ in sampler))
    return counts


def test_two_ranks_train_in_sync(tmp_path: Path) -> None:
    data = make_corpus(tmp_path / "data")
    recipe = tiny_recipe(epochs=EPOCHS, lr=2e-2, schedule="constant")
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tests.train.helpers", str(tmp_path / "recipe.json"), str(data), str(out),
           str(tmp_path / "result-{rank}.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (json.loads((tmp_path / f"result-{rank}.json").read_text()) for rank in (0, 1))

    # identical weights on both ranks (checked inside, and by each rank's digest)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["ranks_in_sync"] is True and r1["ranks_in_sync"] is True
    assert r0["weights_sha256"] == r1["weights_sha256"]
    # each rank took its half of every epoch's batches
    single = _batches_per_epoch(data, recipe["train"]["max_duration"])
    assert r0["steps"] == r1["steps"] == sum(math.ceil(n / 2) for n in single) < sum(single)
    # dev metrics summed over both ranks' shards: every dev utterance once, same numbers on both
    assert all(row["dev_utterances"] == 20 for row in r0["history"])
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in r0["history"]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in r1["history"]]
    # it trains
    assert r0["history"][-1]["train_loss"] < r0["history"][0]["train_loss"] / 3
    assert r0["dev_wer"] < 50.0
    # rank 0 wrote the model directory
    assert (out / "model.safetensors").is_file() and (out / "training.json").is_file()
    assert json.loads((out / "training.json").read_text())["world_size"] == 2
