"""Data-parallel training inside one stage run: where this process sits in its group, and the few collectives used.

Whoever starts the processes (Ray Train in a sweep, ``torch.multiprocessing`` in a test) initialises
``torch.distributed`` first: NCCL on GPUs, gloo on CPUs. The trainer then needs only this object.

How a step is split (and why results do not depend on the number of workers):

* the configured batch is the **global** batch; each of ``W`` ranks trains on its ``B / W`` rows;
* every rank draws the whole step's randomness (data indices, flips, timesteps, noise, masks) from generators seeded
  alike and keeps its own rows, so rank ``r`` sees rows ``[r B/W, (r+1) B/W)`` of exactly the draws a one-worker run
  makes. The ranks' masks are distinct draws (different rows), and a W-worker run equals a one-worker run of the same
  global batch up to float reduction order. (The price: each rank draws ``B`` rows of noise and masks, not
  ``B / W``; not measured separately, as these draws are a few elementwise kernels beside a forward and backward.)
* DDP averages the gradients (the loss is a mean over rows, so the mean of the ranks' gradients is the gradient of
  the global batch), hence every rank holds the same weights, optimizer state and EMA after every step;
* rank 0 alone writes checkpoints, metrics files and samples; all ranks resume from the checkpoint rank 0 names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class BatchDoesNotDivide(ValueError):
    """The global batch cannot be split evenly over the workers."""


class ReplicasDiverged(RuntimeError):
    """The ranks' weights differ: gradients were not averaged (the bug data-parallel training must not have)."""


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel group: ``rank`` of ``world_size`` (the default: a lone process)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_process_group(cls) -> DataParallel:
        """The group ``torch.distributed`` was initialised with; a lone process when it was not."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, metrics files and samples."""
        return self.rank == 0

    def rows(self, global_batch: int, what: str = "batch_size") -> slice:
        """This rank's rows of a global batch; :class:`BatchDoesNotDivide` when it does not split evenly."""
        if global_batch % self.world_size:
            raise BatchDoesNotDivide(
                f"{what} {global_batch} does not split evenly over {self.world_size} workers: the batch is the global "
                f"batch (all workers together); use a multiple of {self.world_size}"
            )
        local = global_batch // self.world_size
        return slice(self.rank * local, (self.rank + 1) * local)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` under DDP (gradients averaged across ranks during backward); the model itself when alone."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        bare = device.index is None  # torch types device.index as int, but a bare "cuda" device has None there
        ids = [torch.cuda.current_device() if bare else device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over ranks (a sum all-reduce: gloo has no average op)."""
        if not self.enabled:
            return value
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world_size

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (any picklable value)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def weights_checksum(model: nn.Module) -> float:
    """One float64 number per model state: the sum over parameter tensors ``i`` of ``sum(w_i) * (1 + i / 1000)``.
    Ranks whose weights differ anywhere get different numbers (barring a cancellation no training produces)."""
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])  # (P,) on the device
    weights = 1.0 + torch.arange(len(sums), dtype=torch.float64, device=sums.device) / 1000.0
    return float((sums * weights).sum())  # one host sync, not one per tensor


def check_replicas(model: nn.Module, parallel: DataParallel, rtol: float = 1e-9) -> list[float]:
    """Every rank's :func:`weights_checksum`; raises :class:`ReplicasDiverged` when any differs from rank 0's."""
    sums = parallel.gather(weights_checksum(model))
    ref = sums[0]
    if any(abs(s - ref) > rtol * max(1.0, abs(ref)) for s in sums):
        raise ReplicasDiverged(f"the ranks' weights differ (checksums {sums}): gradients are not being averaged")
    return sums
