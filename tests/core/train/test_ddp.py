"""Training under torchrun: two gloo processes train one model (weights equal on both ranks), rank 0 writes
the folder."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from segtune.core.train import ddp

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from safetensors.torch import save_file
    from segtune.core.train.trainer import TrainConfig, train

    data, out, dump = np.load(sys.argv[1]), sys.argv[2], sys.argv[3]
    config = TrainConfig(spatial_dims=2, head="binary", patch=64, batch_size=2, epochs=2, steps_per_epoch=4,
                         depth=2, base_channels=4, device="cpu", amp=False, patience=None, val_fraction=0.5)
    result = train([data["image0"], data["image1"]], [data["labels0"], data["labels1"]], config, out=out,
                   overwrite=True)
    rank = int(os.environ["RANK"])
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, f"{dump}/rank{rank}.safetensors")
    with open(f"{dump}/rank{rank}.json", "w") as f:
        json.dump({"history": result.history, "processes": result.config["training"].get("processes"),
                   "best_epoch": result.best_epoch}, f)
    """
)


def _discs(seed: int, shape=(96, 96)) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs on noise and their instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    for index in range(1, 7):
        cy, cx = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(16, 50)] = index
    image = rng.normal(100, 10, shape) + 300 * (labels > 0)
    return image.astype(np.float32), labels


@pytest.mark.slow
def test_two_gloo_processes_train_one_model(tmp_path):
    from safetensors.torch import load_file

    from segtune.core.models.store import load_model

    arrays = {}
    for i in range(2):
        arrays[f"image{i}"], arrays[f"labels{i}"] = _discs(i)
    np.savez(tmp_path / "data.npz", **arrays)
    (tmp_path / "script.py").write_text(SCRIPT)
    out, dump = tmp_path / "model", tmp_path / "ranks"
    dump.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(tmp_path / "script.py"),
        str(tmp_path / "data.npz"),
        str(out),
        str(dump),
    ]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]

    ranks = [load_file(str(dump / f"rank{r}.safetensors")) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:  # parameters and normalisation statistics alike, bit for bit
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    reports = [json.loads((dump / f"rank{r}.json").read_text()) for r in range(2)]
    assert reports[0]["processes"] == 2  # it really ran as one 2-process job
    timeless = [
        [{k: v for k, v in e.items() if k not in ("seconds", "elapsed")} for e in r["history"]] for r in reports
    ]
    assert timeless[0] == timeless[1] and len(timeless[0]) == 2  # the same metrics, so the same decisions
    assert reports[0]["best_epoch"] == reports[1]["best_epoch"]
    assert all(entry["steps"] == 2 for entry in reports[0]["history"])  # 4 steps of work shared by 2 processes

    model, config = load_model(out)  # the same model folder a single process writes, loadable
    saved = load_file(str(out / "weights.safetensors"))
    for key, value in model.state_dict().items():
        assert torch.equal(saved[key], ranks[0][key]) and torch.equal(value, ranks[0][key]), key
    assert config["training"]["processes"] == 2 and config["training"]["status"] == "finished"
    with open(out / "training_log.csv", newline="") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]  # written once, by rank 0
    assert (out / "checkpoint" / "last.safetensors").is_file()


def test_a_single_process_is_untouched(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = ddp.init_from_env("cpu")
    assert not context.active and context.is_main and context.device is None
    model = torch.nn.Linear(2, 2)
    assert ddp.wrap_model(model) is model and ddp.unwrap_model(model) is model
    assert ddp.rank_seed(7) == 7 and ddp.shard_steps(5) == 5
    assert ddp.any_rank(True) is True and ddp.any_rank(False) is False
    assert ddp.all_reduce_mean(0.25) == 0.25 and ddp.on_main(lambda: {"a": 1}) == {"a": 1}
    assert ddp.sampler_for(list(range(4))) is None and ddp.main_only("bar") == "bar"
    assert ddp.launch_rank() == 0


def test_torchrun_variables_are_checked(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK=5 is not in range for WORLD_SIZE=2"):
        ddp.init_from_env("cpu")
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="must be integers"):
        ddp.init_from_env("cpu")
