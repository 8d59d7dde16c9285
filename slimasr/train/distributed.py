"""Multi-process data parallel training with ``torch.distributed``, launched by ``torchrun``.

    torchrun --nproc_per_node 2 -m slimasr train --config CFG --data DIR --out MODEL_DIR

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``;
:func:`setup` joins the process group (gloo on CPU, nccl on CUDA) and picks this rank's device.
Without those variables everything here is a no-op for a single process. lhotse samplers read
the same variables, so each rank draws every ``world_size``-th batch (with equal batch counts).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0  # global rank; rank 0 writes every file
    world_size: int = 1  # number of processes
    local_rank: int = 0  # rank on this machine: picks the CUDA device
    device: torch.device = torch.device("cpu")  # where this rank's model lives
    owns_group: bool = False  # True when setup() created the process group (so cleanup ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"``: this rank's CUDA device when CUDA exists, else the CPU; otherwise ``name``."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def setup(device_name: str = "auto") -> DistInfo:
    """Join the process group if launched by torchrun (or one already exists); pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        return DistInfo(rank, world_size, local_rank, pick_device(device_name, local_rank))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world_size <= 1:
        return DistInfo(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=True)


def cleanup(info: DistInfo) -> None:
    """Leave the process group if :func:`setup` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(values: Sequence[float], info: DistInfo) -> list[float]:
    """Element-wise sum over ranks (float64, so counts stay exact)."""
    if not info.distributed:
        return [float(v) for v in values]
    backend_device = info.device if info.device.type == "cuda" else torch.device("cpu")
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=backend_device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is True on at least one (e.g. a non-finite loss)."""
    return all_reduce_sum([float(flag)], info)[0] > 0


def broadcast_tensor(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Rank 0's ``t`` on every rank (same shape and dtype everywhere; no pickling involved)."""
    if not info.distributed:
        return t
    backend_device = info.device if info.device.type == "cuda" else torch.device("cpu")
    t = t.to(backend_device).clone()
    dist.broadcast(t, src=0)
    return t.cpu()


def sync_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank. DDP broadcasts them
    before each training forward, so each rank's last forward leaves its own values behind."""
    if not info.distributed:
        return
    for buffer in model.buffers():
        buffer.copy_(broadcast_tensor(buffer.detach(), info).to(buffer.device))


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes and bytes): equal iff bitwise equal."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def ranks_in_sync(model: torch.nn.Module, info: DistInfo) -> bool:
    """Whether every rank holds bitwise the same weights as rank 0."""
    if not info.distributed:
        return True
    mine = torch.tensor(list(bytes.fromhex(weights_digest(model))), dtype=torch.int64)
    return not any_rank(not torch.equal(mine, broadcast_tensor(mine, info)), info)


def wrap(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when there is more than one rank."""
    if not info.distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
