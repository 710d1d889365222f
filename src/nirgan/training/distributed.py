"""torchrun / DDP plumbing shared by both model families: process-group setup, batch-norm
synchronisation and object broadcasts. (Which networks a step wraps in DDP is each family's
session's business: it knows its networks.)

Under ``torchrun`` (WORLD_SIZE > 1) every process holds one replica and a shard of each
global batch. Batch-norm statistics must then be taken over the global batch, or the
replicas compute different functions than a single process would. On CUDA that is
``nn.SyncBatchNorm``; PyTorch's SyncBatchNorm refuses CPU tensors, so on CPU (gloo)
:class:`AllReduceBatchNorm2d` does the same with a differentiable all-reduce of the
per-channel sums, which makes two CPU processes compute what one does (up to float
summation order), the property the DDP test checks.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn



@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment; a no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span all processes (CPU-capable SyncBatchNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        xf = x.float()
        count = torch.full((1,), float(x.numel() // c), device=x.device)
        # One collective for both moments; its backward all-reduces the gradients, so each
        # process's loss reaches every other process's inputs through the shared statistics.
        stats = all_reduce(torch.cat([xf.sum((0, 2, 3)), xf.pow(2).sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean.pow(2)).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1.0), momentum)
        y = (xf - mean.view(1, c, 1, 1)) * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Replace every BatchNorm2d by a synchronised one (state kept) for multi-process training."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = AllReduceBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats, device=child.running_mean.device
                                       if child.running_mean is not None else None)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_batchnorm(child, device_type)
    return module


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's value of a picklable object on every process."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


__all__ = ["AllReduceBatchNorm2d", "DistInfo", "barrier", "broadcast_object", "convert_batchnorm",
           "init_distributed", "shutdown_distributed"]
