"""Correctness of tensor-parallel decoding over NCCL at paper size: TP = world against TP 1.

Every rank builds the same paper-size model (random weights from one seed, bf16, on its GPU),
and on every rank that full model is the TP 1 reference. Then each rank keeps only its shard
(:func:`mlra.parallel.shard_model`, the plan ``mlra generate --tp N`` uses) and the group
runs the same requests. Reported, per variant:

- prompt logits (a dense forward over ``--prompt-len`` tokens): max |TP - TP1| / max |TP1|,
  next to the scale of bf16 rounding itself: each against the same weights run in fp32;
- greedy tokens of ``mlra.generate`` (paged cache, CUDA graphs): how many of ``--new-tokens``
  agree; where they first part, the TP 1 model's margin between its two likeliest tokens at
  that step (a part at a margin inside bf16 rounding is a near-tie, not an error);
- per-rank cache bytes per token.

    torchrun --standalone --nproc-per-node 4 benchmarks/tp/check_tp_nccl.py --out "$OUT"

CPU smoke test (gloo, tiny models): ``--size tiny --prompt-len 16 --new-tokens 8``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mlra import ModelConfig, Transformer
from mlra.bench.models import random_model
from mlra.cache import CacheLayout
from mlra.generate import generate
from mlra.parallel import shard_model
from mlra.parallel.runtime import init_tp, shutdown_tp


def variant_config(name: str, size: str, gqa_kv_heads: int) -> ModelConfig:
    over = {"n_kv_heads": gqa_kv_heads} if name == "gqa" and gqa_kv_heads else {}
    return ModelConfig.preset(name, size=size, zero_init_output=False, **over)


def build(cfg: ModelConfig, device: torch.device) -> Transformer:
    # the same weights on every rank: same seed, same generator calls
    return random_model(cfg, device, torch.bfloat16)


@torch.no_grad()
def check(cfg: ModelConfig, ctx, prompt: list[int], new_tokens: int) -> dict:
    name = cfg.name
    full = build(cfg, ctx.device)
    ids = torch.tensor([prompt], device=ctx.device)
    ref_logits = full(ids).logits.float()
    exact = full.float()(ids).logits  # the same weights in fp32: the scale of bf16 rounding
    full.to(torch.bfloat16)
    ref_tokens = generate(full, [prompt], max_new_tokens=new_tokens)[0]
    path = torch.tensor([prompt + ref_tokens[:-1]], device=ctx.device)
    steps = full(path).logits[0, len(prompt) - 1:].float()  # logits of each generated token
    top2 = steps.topk(2, dim=-1).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()
    shard = shard_model(full, ctx)
    del full
    torch.cuda.empty_cache()
    tp_logits = shard(ids).logits.float()
    tp_tokens = generate(shard, [prompt], max_new_tokens=new_tokens)[0]
    same = next((i for i, (a, b) in enumerate(zip(ref_tokens, tp_tokens, strict=True))
                 if a != b), None)
    layout = CacheLayout.from_config(shard.config)
    cache_bytes = layout.elements_per_token * shard.config.n_layers * 2
    per_rank = ctx.gather_objects(cache_bytes)
    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).abs().max() / b.abs().max()).item()

    row = {"variant": name, "tp": ctx.world_size,
           "prompt_logits_rel_err": rel(tp_logits, ref_logits),
           "tp1_bf16_vs_fp32_rel_err": rel(ref_logits, exact),
           "tp_bf16_vs_fp32_rel_err": rel(tp_logits, exact),
           "new_tokens": new_tokens, "tokens_equal": same is None,
           "first_difference": same,
           "margin_at_difference": None if same is None else margins[same],
           "median_margin": sorted(margins)[len(margins) // 2],
           "cache_bytes_per_token_per_rank": per_rank, "tp1_tokens": ref_tokens,
           "tp_tokens": tp_tokens}
    del shard
    torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="mlra_4")
    p.add_argument("--size", default="paper", help="model size preset (tiny: CPU smoke test)")
    p.add_argument("--gqa-kv-heads", type=int, default=0,
                   help="GQA with this many K/V heads (the paper preset's 6 allow TP 1, 2, 3, "
                   "6; 8 allows TP 4); 0: the preset")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    ctx = init_tp()
    g = torch.Generator().manual_seed(1)
    rows = []
    for name in args.variants.split(","):
        cfg = variant_config(name, args.size, args.gqa_kv_heads)
        prompt = torch.randint(0, cfg.vocab_size, (args.prompt_len,), generator=g).tolist()
        row = check(cfg, ctx, prompt, args.new_tokens)
        rows.append(row)
        if ctx.is_main:
            part = ("all equal" if row["tokens_equal"] else
                    f"first differ at {row['first_difference']} (TP 1 top-2 margin there "
                    f"{row['margin_at_difference']:.4f}, median {row['median_margin']:.4f})")
            print(f"{name} TP {ctx.world_size} vs TP 1: prompt logits rel err "
                  f"{row['prompt_logits_rel_err']:.2e} (bf16 vs fp32 weights: TP 1 "
                  f"{row['tp1_bf16_vs_fp32_rel_err']:.2e}, TP {ctx.world_size} "
                  f"{row['tp_bf16_vs_fp32_rel_err']:.2e}); greedy tokens {part}; cache bytes per "
                  f"token per rank {row['cache_bytes_per_token_per_rank']}", flush=True)
    if ctx.is_main and args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tp_nccl_check.json").write_text(json.dumps(
            {"device": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda"
             else "cpu", "torch": torch.__version__, "size": args.size,
             "world_size": ctx.world_size, "command": sys.argv, "rows": rows}, indent=2))
    ctx.barrier()
    shutdown_tp()
    return 0


if __name__ == "__main__":
    sys.exit(main())
