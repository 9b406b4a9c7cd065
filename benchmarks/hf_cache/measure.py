"""Bytes held by MlraCache after ``MlraForCausalLM.generate`` against the expanded per-head K/V
a DeepSeek-V3-style cache would hold for the same tokens (keys [k_nope ; k_rope] and values per
query head -- per branch for MLRA), formed here from the cached latent rows and measured.

    python benchmarks/hf_cache/measure.py [--size small] [--layers N] [--prompt 256] [--new 16]

``--layers`` keeps a size's per-layer shapes with fewer layers (bytes per token per layer do
not depend on the depth), e.g. ``--size paper --layers 2`` on a CPU.
"""

from __future__ import annotations

import argparse
import json

import torch

import mlra
from mlra.hf import MlraCache, MlraForCausalLM


def expanded_bytes(lm: MlraForCausalLM, cache: MlraCache) -> int:
    """Per-head K ([k_nope ; k_rope]) and V of every cached token, formed from the latent rows
    with each layer's own up-projection."""
    total = 0
    for i, block in enumerate(lm.model.layers):
        attn, state = block.attn, cache.state(i)
        lat, k_rope = state["latent"], state["k_rope"]
        B, S = lat.shape[:2]
        kv = torch.einsum("bslw,lwo->bslo", lat, attn.wkv_b(lat.dtype))
        dh, H, nb = attn.cfg.head_dim, attn.cfg.n_heads, attn.branches
        kv = kv.reshape(B, S, nb, H, 2 * dh)
        k = torch.cat([kv[..., :dh], k_rope[:, :, None, None].expand(B, S, nb, H, -1)], -1)
        v = kv[..., dh:].contiguous()
        total += k.nbytes + v.nbytes
    return total


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="small")
    p.add_argument("--prompt", type=int, default=256)
    p.add_argument("--new", type=int, default=16)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--variants", default="mla,gla_2,mlra_2,mlra_4")
    args = p.parse_args()
    rows = []
    for name in args.variants.split(","):
        torch.manual_seed(0)
        extra = {} if args.layers is None else {"n_layers": args.layers}
        model = mlra.Transformer(mlra.ModelConfig.preset(name, size=args.size, **extra)).eval()
        lm = MlraForCausalLM.from_model(model, pad_token_id=0)
        cache = MlraCache(model.config.n_layers)
        ids = torch.randint(0, model.config.vocab_size, (1, args.prompt))
        lm.generate(ids, max_new_tokens=args.new, do_sample=False, cache=cache,
                    min_new_tokens=args.new)
        tokens = cache.get_seq_length()
        ours, expanded = cache.nbytes, expanded_bytes(lm, cache)
        rows.append(dict(variant=name, size=args.size, tokens=tokens, cache_bytes=ours,
                         expanded_kv_bytes=expanded, ratio=round(expanded / ours, 2),
                         bytes_per_token_layer=ours // (tokens * model.config.n_layers)))
        print(json.dumps(rows[-1]))


if __name__ == "__main__":
    main()
