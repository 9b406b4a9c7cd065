"""Tensor-parallel inference over ``torch.distributed`` (NCCL on GPUs, gloo on CPU).

A rank's shard is itself an :class:`~mlra.model.Transformer` built from a local config, with an
all-reduce as ``Block.reduce`` and a vocab-parallel embedding / head, so the cache, decoder and
generation code run on it unchanged and each rank's cache holds only its heads::

    import mlra
    from mlra.parallel import launch

    def run(ctx, directory, ids):
        model = mlra.load_checkpoint(directory, tp=ctx)   # reads only this rank's slices
        return model(ids).logits                    # full logits on every rank

    logits = launch(run, tp=4, args=("ckpt/", ids))[0]

Or in one call: ``tokens, reports = generate_parallel(path, prompts, tp=4)``.
Under ``torchrun --nproc-per-node N`` call :func:`init_tp` (or the same :func:`launch`, which
then runs ``fn`` in-process). Plans per variant: :mod:`mlra.parallel.plans`.
"""

from mlra.parallel.api import (
    RankReport,
    generate_parallel,
    rank_report,
    shared_seed,
)
from mlra.parallel.launch import RankFailedError, launch
from mlra.parallel.plans import (
    RankShard,
    TensorSlice,
    TPPlan,
    allowed_degrees,
    cache_elements,
    check_degree,
    make_plan,
)
from mlra.parallel.runtime import NCCL_SAFE_ENV, TPContext, in_torchrun, init_tp, shutdown_tp
from mlra.parallel.shard import TensorParallelTransformer, shard_model, shard_state_dict

__all__ = [
    "NCCL_SAFE_ENV", "RankFailedError", "RankReport", "RankShard", "TPContext", "TPPlan",
    "TensorParallelTransformer", "TensorSlice", "allowed_degrees", "cache_elements",
    "check_degree", "generate_parallel", "in_torchrun", "init_tp", "launch",
    "make_plan", "rank_report", "shard_model",
    "shard_state_dict", "shared_seed", "shutdown_tp",
]
