"""Training on several processes: torchrun's variables, DistributedDataParallel, rank 0's role.

``torchrun --nproc_per_node N vae.py train`` (or one ``torchrun`` per node of a Slurm job)
starts N copies of the same command and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; without them this module is a no-op and training is one
plain process. Under torchrun:

- the process group uses NCCL when training on CUDA (each process takes the GPU
  ``cuda:<LOCAL_RANK>``) and gloo on the CPU; MPS has no collective backend and is refused;
- ``train.batch_size`` is the *global* batch: every rank draws the same permutation and the
  same reparameterisation noise, takes every ``world_size``-th spectrogram of each global
  batch (:meth:`DistContext.shard`) and weights its loss by its share, so the gradients that
  DDP averages are those of the whole batch, and N processes follow the single-process run
  within float rounding (and a resumed run may change the number of processes);
- only rank 0 writes files, draws the progress bar and logs below WARNING.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..device import pick_device
from ..errors import ConfigError

__all__ = ["DistContext", "distributed", "rank_and_world", "require_one_process"]

log = logging.getLogger(__name__)


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process, from torchrun's variables; ``(0, 1)`` without."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def require_one_process(command: str) -> None:
    """Refuse ``command`` (``vae.py generate``, ...) under torchrun: only training is shared out.

    Raises
    ------
    ConfigError
        When torchrun started this process as one of several.
    """
    world = rank_and_world()[1]
    if world > 1:
        raise ConfigError(f"{command} runs as one process, but torchrun started {world}; "
                          f"only vae.py train uses several: run python {command}")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job: its rank, the number of processes, its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, metrics, plots and logs."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (gradients averaged over ranks); itself alone.

        DDP copies rank 0's weights to every rank at construction, so all replicas start equal.
        """
        if self.world_size == 1:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def shard(self, n: int) -> tuple[Tensor, float]:
        """This rank's rows of a global batch of ``n``, and the weight of its mean loss.

        Returns
        -------
        rows : Tensor [shape=(n_local,)]
            Positions ``rank, rank + world_size, ...`` in the global batch. A rank left with
            none (the last batch of an epoch can be smaller than the world) takes row 0 with
            weight 0, so it still joins DDP's gradient exchange but adds nothing to it.
        weight : float
            ``n_local * world_size / n``: DDP averages the ranks' gradients, so a rank's
            per-sample mean loss times this weight makes the average the global batch mean.
            0 for a rank without rows.
        """
        rows = torch.arange(n)[self.rank::self.world_size]
        if len(rows) == 0:
            return torch.zeros(1, dtype=torch.long), 0.0
        return rows, len(rows) * self.world_size / n

    def sum(self, values: Tensor) -> Tensor:
        """``values`` summed over all ranks (itself in one process); on every rank."""
        if self.world_size == 1:
            return values
        values = values.to(self.device)
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
        return values


@contextlib.contextmanager
def distributed(device_setting: str, *, key: str = "train.device") -> Iterator[DistContext]:
    """Join torchrun's process group for the duration of the block (one process: nothing to join).

    Parameters
    ----------
    device_setting : str
        The configured device (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``). Under
        torchrun a CUDA device becomes ``cuda:<LOCAL_RANK>``, one GPU per process.
    key : str
        The config key of ``device_setting``, named in errors.

    Yields
    ------
    DistContext

    Raises
    ------
    ConfigError
        When the device is not available, when MPS is asked for under torchrun, or when
        torchrun started more processes on a node than it has GPUs.
    """
    rank, world = rank_and_world()
    device = pick_device(device_setting, key=key)
    if world == 1:
        yield DistContext(0, 1, device)
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "mps":
        raise ConfigError(f"{key}={device_setting!r}: MPS has no multi-process backend; train "
                          "under torchrun on CUDA or the CPU (--set train.device=cpu)")
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"torchrun started local rank {local_rank}, but this node has "
                              f"{torch.cuda.device_count()} GPU(s): use --nproc_per_node "
                              f"{torch.cuda.device_count()} or fewer")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world)
    if rank != 0:
        # only rank 0 reports progress; warnings and errors still come from every rank
        logging.getLogger().setLevel(logging.WARNING)
    log.info("torch.distributed: %d processes (%s), this is rank %d on %s", world, backend,
             rank, device)
    try:
        yield DistContext(rank, world, device)
        # every rank leaves together: a rank that tore the group down and exited while
        # another was still working (rank 0 writes model.pth) could
        # abort in gloo's teardown ("terminate called without an active exception")
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()
