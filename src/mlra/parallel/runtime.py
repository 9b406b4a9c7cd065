"""Process-group setup, the collectives a tensor-parallel shard needs, and the vocab-parallel
embedding and head.

``init_tp`` joins (or creates) the default process group from the ``torchrun`` environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) with a timeout on
every collective, so a rank whose peer died or hangs raises instead of waiting forever. NCCL on
CUDA (one GPU per local rank), gloo on CPU. The NVLink-multicast switches of NCCL and symmetric
memory are kept off (:data:`NCCL_SAFE_ENV`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mlra.errors import ConfigError

NCCL_SAFE_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
"""Environment kept in every process we start or join: NVLink multicast (NVLS) off."""

DEFAULT_TIMEOUT_S = 300.0
"""Collective timeout: a rank blocked this long on a dead or hung peer raises."""


@dataclass
class TPContext:
    """One rank's view of its tensor-parallel group."""

    rank: int
    world_size: int
    device: torch.device
    backend: str | None
    group: dist.ProcessGroup | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the rank that prints and writes)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group exists (also for a group of one)."""
        return self.backend is not None

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` over the group in place and return it (identity on one rank)."""
        if self.world_size > 1:
            dist.all_reduce(x, op=dist.ReduceOp.SUM, group=self.group)
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``x`` (same shape on all ranks) along the last dim."""
        if self.world_size == 1:
            return x
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim=-1)

    def gather_objects(self, obj: object) -> list:
        """Every rank's ``obj`` (picklable), on every rank, in rank order."""
        if self.world_size == 1:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def barrier(self) -> None:
        """Wait for every rank (no-op on one rank)."""
        if self.world_size > 1:
            dist.barrier(group=self.group)


def apply_safe_env() -> None:
    """Set :data:`NCCL_SAFE_ENV` (without overriding a value the user set)."""
    for key, value in NCCL_SAFE_ENV.items():
        os.environ.setdefault(key, value)


def in_torchrun() -> bool:
    """True when this process was started by ``torchrun`` (or :func:`mlra.parallel.launch`)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_tp(
    tp: int | None = None,
    backend: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    device: str | torch.device | None = None,
) -> TPContext:
    """Join the tensor-parallel group of this process.

    Under ``torchrun`` (or a process started by :func:`mlra.parallel.launch`) the group is the
    whole world; ``tp``, when given, must equal the world size. Outside, ``tp`` must be None or
    1 and a single-rank context without a process group is returned. ``backend`` defaults to
    NCCL when CUDA is available and gloo otherwise; ``device`` to ``cuda:LOCAL_RANK`` or CPU.
    """
    if not in_torchrun():
        if tp not in (None, 1):
            raise ConfigError(
                f"tensor parallelism over {tp} ranks needs {tp} processes: start them with "
                f"`torchrun --nproc-per-node {tp} ...` or mlra.parallel.launch(fn, tp={tp})"
            )
        return TPContext(0, 1, torch.device(device or "cpu"), None)
    apply_safe_env()
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if tp is not None and tp != world:
        raise ConfigError(
            f"tensor-parallel degree {tp} does not match the {world} processes started "
            f"(WORLD_SIZE={world}); start exactly {tp} processes or pass --tp {world}"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
    if device is None:
        device = f"cuda:{local_rank}" if backend == "nccl" else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(
            backend=backend, timeout=timedelta(seconds=timeout_s), rank=rank, world_size=world,
            **kwargs,
        )
    return TPContext(rank, world, dev, dist.get_backend())


def shutdown_tp() -> None:
    """Destroy the default process group if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------ vocab parallel
def vocab_parallel_embed(
    ctx: TPContext, input_ids: torch.Tensor, weight: torch.Tensor, vocab_start: int
) -> torch.Tensor:
    """Embedding lookup with the vocabulary split over ranks: each rank looks up the ids in its
    rows ``[vocab_start, vocab_start + rows)``, zeros elsewhere; the all-reduce sums them."""
    rows = weight.shape[0]
    local = input_ids - vocab_start
    outside = (local < 0) | (local >= rows)
    out = F.embedding(local.masked_fill(outside, 0), weight)
    out = out.masked_fill(outside[..., None], 0.0)
    return ctx.all_reduce(out)


def vocab_parallel_logits(
    ctx: TPContext, hidden: torch.Tensor, weight: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    """Tied head with the vocabulary split over ranks: local logits, all-gathered along the
    vocabulary and trimmed to the true ``vocab_size`` (every rank gets the full logits)."""
    return ctx.all_gather_last(F.linear(hidden, weight))[..., :vocab_size]
