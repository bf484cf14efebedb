"""Data-parallel training with torch.distributed (gloo, 2 CPU processes)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[2]


def _worker(rank: int, world_size: int, workdir: str) -> None:
    sys.path.insert(0, str(ROOT))
    import torch.distributed as dist

    from gaqtool.data.frames import read_npz
    from gaqtool.data.spec import sample_path
    from gaqtool.training import TrainOptions, train_model
    from tests.conftest import make_tiny_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{workdir}/rendezvous", rank=rank, world_size=world_size)
    frames = read_npz(sample_path("train"))
    model = make_tiny_model(seed=rank)  # different starts: rank 0's weights must be broadcast
    result = train_model(model, frames.subset(range(8)), frames.subset(range(90, 92)),
                         TrainOptions(epochs=1, batch_size=2, warmup_steps=1, seed=0))
    torch.save({k: v.clone() for k, v in result.model.state_dict().items()}, f"{workdir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_process_training_keeps_parameters_identical(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    from tests.conftest import make_tiny_model

    start = make_tiny_model(seed=0).state_dict()
    assert any(not torch.equal(a[k], start[k]) for k in a if a[k].is_floating_point())  # it trained
