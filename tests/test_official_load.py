"""Official (published) checkpoints: every variant written in the official layout loads and
computes the logits of an independent implementation of the documented formulas.

The reference below works directly on the official state dict (docs/checkpoints.md
and docs/method.md) with plain torch: explicit causal softmaxes, MLRA-4 as four separate attentions,
GLA's per-block up-projections, etc. It never calls the mlra model classes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mlra import load_checkpoint
from mlra.checkpoints import resolve_official_config

D, H, LAYERS, VOCAB, INTER = 32, 4, 2, 64, 48
DN, DR, DC, DQ = 8, 4, 32, 16  # latent family: nope, rope, latent, query-latent widths
EPS = 1e-6


# ------------------------------------------------------------------------- official writer
def _w(gen: torch.Generator, *shape: int, std: float = 0.3) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * std


def _norm(gen: torch.Generator, n: int) -> torch.Tensor:
    return 1.0 + 0.2 * torch.randn(n, generator=gen)


def official_attention(variant: str, gen: torch.Generator) -> tuple[dict, dict]:
    """(attention tensors of one layer, family-specific config.json fields)."""
    base = variant.replace("_gated", "").replace("_no_scale", "")
    a: dict[str, torch.Tensor] = {}
    if base in ("mha", "mqa", "gqa"):
        dh = 8
        group = {"mha": 1, "mqa": H, "gqa": 2}[base]
        a["c_q.weight"] = _w(gen, H * dh, D)
        a["c_k.weight"] = _w(gen, H // group * dh, D)
        a["c_v.weight"] = _w(gen, H // group * dh, D)
        cfg = {"head_dim": dh} if base == "mha" else {"head_dim": dh, "group_size": group}
        dv = dh
    elif base == "gta":
        dh, group = 8, 2
        a["c_q.weight"] = _w(gen, H * dh, D)
        a["kv_proj.weight"] = _w(gen, H // group * dh, D)
        a["W_rope_k.weight"] = _w(gen, dh // 2, D)
        cfg, dv = {"head_dim": dh, "group_size": group}, dh
    elif base == "mfa":
        dh, sq = 16, 24
        a["c_q.weight"] = _w(gen, sq, D)
        a["q_layernorm.weight"] = _norm(gen, sq)
        a["w_q.weight"] = _w(gen, H * dh, sq)
        a["c_k.weight"] = _w(gen, dh, D)
        a["c_v.weight"] = _w(gen, dh, D)
        cfg, dv = {"head_dim": dh, "share_q_dim": sq}, dh
    elif base == "tpa":
        dh, R, Rq = 8, 2, 3
        a["c_qkv.W_A_q.weight"] = _w(gen, H * Rq, D)
        a["c_qkv.W_A_k.weight"] = _w(gen, H * R, D)
        a["c_qkv.W_A_v.weight"] = _w(gen, H * R, D)
        a["c_qkv.W_B_q.weight"] = _w(gen, Rq * dh, D)
        a["c_qkv.W_B_k.weight"] = _w(gen, R * dh, D)
        a["c_qkv.W_B_v.weight"] = _w(gen, R * dh, D)
        cfg, dv = {"head_dim": dh, "rank": R, "q_rank": Rq}, dh
    else:
        a["q_a_proj.weight"] = _w(gen, DQ, D)
        a["q_a_layernorm.weight"] = _norm(gen, DQ)
        a["q_b_proj.weight"] = _w(gen, H * (DN + DR), DQ)
        a["kv_a_proj_with_mqa.weight"] = _w(gen, DC + DR, D)
        if base == "mla":
            a["kv_a_layernorm.weight"] = _norm(gen, DC)
            a["kv_b_proj.weight"] = _w(gen, H * 2 * DN, DC)
        elif base == "gla_2":
            for k in (1, 2):
                a[f"kv_a_layernorm_{k}.weight"] = _norm(gen, DC // 2)
                a[f"kv_b_proj_{k}.weight"] = _w(gen, H // 2 * 2 * DN, DC // 2)
        else:
            for j in range(4):
                a[f"kv_a_layernorms.{j}.weight"] = _norm(gen, DC // 4)
            heads = {"gla_4": H // 4, "mlra_2": H // 2, "mlra_4": H}[base]
            a["kv_b_proj"] = _w(gen, 4, DC // 4, heads * 2 * DN)
        cfg = {"q_lora_rank": DQ, "qk_rope_head_dim": DR, "kv_lora_rank": DC,
               "qk_nope_head_dim": DN}
        dv = DN
    a["c_proj.weight"] = _w(gen, D, H * dv)
    if variant.endswith("_gated") or "_gated_" in variant:
        a["c_gated.weight" if base == "gqa" else "gated_proj.weight"] = _w(gen, H * dv, D)
    return a, cfg


def official_state(variant: str, seed: int = 0) -> tuple[dict, dict]:
    """A random official state dict (tied embedding stored twice) and its config.json."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {"transformer.wte.weight": _w(gen, VOCAB, D, std=1.0)}
    fields: dict = {}
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        attn, fields = official_attention(variant, gen)
        state.update({p + "attn." + k: v for k, v in attn.items()})
        state[p + "input_layernorm.weight"] = _norm(gen, D)
        state[p + "post_attention_layernorm.weight"] = _norm(gen, D)
        state[p + "mlp.c_fc1.weight"] = _w(gen, INTER, D)
        state[p + "mlp.c_fc2.weight"] = _w(gen, INTER, D)
        state[p + "mlp.c_proj.weight"] = _w(gen, D, INTER)
    state["layernorm.weight"] = _norm(gen, D)
    state["lm_head.weight"] = state["transformer.wte.weight"].clone()
    hf = {"n_layer": LAYERS, "n_head": H, "n_embd": D, "intermediate_size": INTER,
          "block_size": 128, "bias": False, "vocab_size": VOCAB, "dropout": 0.0, **fields,
          "model_type": "gpt2", "architectures": ["GPT"], "torch_dtype": "float32",
          "transformers_version": "4.51.3"}
    return state, hf


def write_official(directory: Path, state: dict, hf: dict, shards: int = 3) -> Path:
    """Write the Hugging Face layout: config.json plus one pytorch_model.bin (shards=1) or
    pytorch_model-0000N-of-0000M.bin shards with pytorch_model.bin.index.json."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf, indent=2))
    if shards == 1:
        torch.save(state, directory / "pytorch_model.bin")
        return directory
    keys = list(state)
    per = math.ceil(len(keys) / shards)
    weight_map = {}
    for s in range(shards):
        name = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[s * per:(s + 1) * per]}
        torch.save(part, directory / name)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * 4 for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    return directory


# ------------------------------------------------------------------------- reference model
def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def rope(x: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE over the last dim of x [B, T, ..., r], positions 0..T-1, base 1e4."""
    T, r = x.shape[1], x.shape[-1]
    inv = 10000.0 ** (-torch.arange(0, r, 2, dtype=torch.float64) / r)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv  # [T, r/2]
    cos, sin = ang.cos().float(), ang.sin().float()
    shape = (1, T) + (1,) * (x.dim() - 3) + (r // 2,)
    cos, sin = cos.view(shape), sin.view(shape)
    x1, x2 = x[..., : r // 2], x[..., r // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """q, k [B, T, H, dq], v [B, T, H, dv] -> [B, T, H, dv], one explicit softmax."""
    s = torch.einsum("bthd,bshd->bhts", q, k) * scale
    T = q.shape[1]
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.einsum("bhts,bshd->bthd", s.softmax(-1), v)


def ref_attention(a: dict, variant: str, x: torch.Tensor, hf: dict) -> torch.Tensor:
    """One official attention layer on the normed block input x [B, T, d]."""
    base = variant.replace("_gated", "").replace("_no_scale", "")
    no_scale = "_no_scale" in variant
    B, T, d = x.shape
    lin = lambda name, inp: inp @ a[name].t()  # noqa: E731
    if base in ("mha", "mqa", "gqa", "gta"):
        dh = hf["head_dim"]
        q = lin("c_q.weight", x).view(B, T, H, dh)
        if base == "gta":
            r = a["W_rope_k.weight"].shape[0]
            q = torch.cat([q[..., : dh - r], rope(q[..., dh - r:])], -1)
            kv = lin("kv_proj.weight", x).view(B, T, -1, dh)
            kr = rope(lin("W_rope_k.weight", x))  # [B, T, r]
            rep = H // kv.shape[2]
            kv = kv.repeat_interleave(rep, dim=2)
            k = torch.cat([kv[..., : dh - r], kr[:, :, None].expand(B, T, H, r)], -1)
            v = kv  # [tied | value]
        else:
            q = rope(q)
            k = rope(lin("c_k.weight", x).view(B, T, -1, dh))
            v = lin("c_v.weight", x).view(B, T, -1, dh)
            rep = H // k.shape[2]
            k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
        o = causal_attention(q, k, v, 1 / math.sqrt(dh))
    elif base == "mfa":
        dh = hf["head_dim"]
        q = rope(lin("w_q.weight", rms(lin("c_q.weight", x), a["q_layernorm.weight"])).view(
            B, T, H, dh))
        k = rope(lin("c_k.weight", x).view(B, T, 1, dh)).expand(B, T, H, dh)
        v = lin("c_v.weight", x).view(B, T, 1, dh).expand(B, T, H, dh)
        o = causal_attention(q, k, v, 1 / math.sqrt(dh))
    elif base == "tpa":
        dh, R, Rq = hf["head_dim"], hf["rank"], hf["q_rank"]

        def factor(n: str, rank: int, rotate: bool) -> torch.Tensor:
            A = lin(f"c_qkv.W_A_{n}.weight", x).view(B, T, H, rank)
            Bm = lin(f"c_qkv.W_B_{n}.weight", x).view(B, T, rank, dh)
            if rotate:
                Bm = rope(Bm)
            return torch.einsum("bthr,btrd->bthd", A, Bm) / rank

        q, k, v = factor("q", Rq, True), factor("k", R, True), factor("v", R, False)
        o = causal_attention(q, k, v, 1 / math.sqrt(dh))
    else:
        qs = 1.0 if no_scale else math.sqrt(d / DQ)
        cq = rms(lin("q_a_proj.weight", x), a["q_a_layernorm.weight"]) * qs
        q = lin("q_b_proj.weight", cq).view(B, T, H, DN + DR)
        q = torch.cat([q[..., :DN], rope(q[..., DN:])], -1)
        ckv = lin("kv_a_proj_with_mqa.weight", x)
        c, kr = ckv[..., :DC], rope(ckv[..., DC:])
        krh = kr[:, :, None].expand(B, T, H, DR)
        scale = 1 / math.sqrt(DN + DR)

        def attend(kv: torch.Tensor) -> torch.Tensor:  # kv [B, T, H, 2 DN] head-major
            k = torch.cat([kv[..., :DN], krh], -1)
            return causal_attention(q, k, kv[..., DN:], scale)

        if base == "mla":
            cn = rms(c, a["kv_a_layernorm.weight"]) * (1.0 if no_scale else math.sqrt(d / DC))
            o = attend(lin("kv_b_proj.weight", cn).view(B, T, H, 2 * DN))
        elif base == "gla_2":
            w = DC // 2
            parts = []
            for k in (1, 2):
                ck = rms(c[..., (k - 1) * w:k * w], a[f"kv_a_layernorm_{k}.weight"])
                ck = ck * (1.0 if no_scale else math.sqrt(d / w))
                parts.append(lin(f"kv_b_proj_{k}.weight", ck).view(B, T, H // 2, 2 * DN))
            o = attend(torch.cat(parts, dim=2))
        else:
            w = DC // 4
            blocks = []
            for j in range(4):
                cj = rms(c[..., j * w:(j + 1) * w], a[f"kv_a_layernorms.{j}.weight"])
                cj = cj * (1.0 if no_scale else math.sqrt(d / w))
                blocks.append(torch.einsum("bti,io->bto", cj, a["kv_b_proj"][j]))
            if base == "gla_4":  # block j feeds heads [jH/4, (j+1)H/4)
                o = attend(torch.cat([b.view(B, T, H // 4, 2 * DN) for b in blocks], dim=2))
            elif base == "mlra_4":  # four softmaxes over all heads, summed, times 1/sqrt(4)
                outs = [attend(b.view(B, T, H, 2 * DN)) for b in blocks]
                o = (outs[0] + outs[1] + outs[2] + outs[3]) * (1.0 if no_scale else 0.5)
            else:  # mlra_2: branch A = blocks 0, 1 (head halves), branch B = blocks 2, 3
                half = lambda b: b.view(B, T, H // 2, 2 * DN)  # noqa: E731
                oa = attend(torch.cat([half(blocks[0]), half(blocks[1])], dim=2))
                ob = attend(torch.cat([half(blocks[2]), half(blocks[3])], dim=2))
                o = (oa + ob) * (1.0 if no_scale else 1 / math.sqrt(2))
    o = o.reshape(B, T, -1)
    gate = a.get("gated_proj.weight", a.get("c_gated.weight"))
    if gate is not None:
        o = o * torch.sigmoid(x @ gate.t())
    return o @ a["c_proj.weight"].t()


def ref_logits(state: dict, hf: dict, variant: str, ids: torch.Tensor) -> torch.Tensor:
    x = state["transformer.wte.weight"][ids]
    for i in range(hf["n_layer"]):
        p = f"transformer.h.{i}."
        a = {k[len(p + "attn."):]: v for k, v in state.items() if k.startswith(p + "attn.")}
        x = x + ref_attention(a, variant, rms(x, state[p + "input_layernorm.weight"]), hf)
        h = rms(x, state[p + "post_attention_layernorm.weight"])
        m = F.silu(h @ state[p + "mlp.c_fc1.weight"].t()) * (h @ state[p + "mlp.c_fc2.weight"].t())
        x = x + m @ state[p + "mlp.c_proj.weight"].t()
    return rms(x, state["layernorm.weight"]) @ state["lm_head.weight"].t()


# ------------------------------------------------------------------------- tests
ALL_VARIANTS = [
    "mha", "mqa", "gqa", "gta", "mfa", "tpa", "mla", "gla_2", "gla_4", "mlra_2", "mlra_4",
    "gqa_gated", "mlra_4_gated", "mla_no_scale", "mlra_2_no_scale",
]


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_official_checkpoint_matches_reference(tmp_path: Path, variant: str) -> None:
    state, hf = official_state(variant, seed=ALL_VARIANTS.index(variant))
    shards = 1 if variant in ("mha", "mlra_4_gated") else 2 + ALL_VARIANTS.index(variant) % 2
    directory = write_official(tmp_path / variant, state, hf, shards=shards)
    # The no-scale ablations have the same keys: they need the variant name.
    requested = variant if "no_scale" in variant else None
    model = load_checkpoint(directory, variant=requested)
    expected_name = variant
    assert model.config.name == expected_name
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(ids).logits
        want = ref_logits(state, hf, variant, ids)
    assert got.shape == want.shape == (2, 11, VOCAB)
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, atol=2e-4 * max(scale, 1.0), rtol=1e-4)


@pytest.mark.parametrize("variant", ["mla", "mlra_2", "gla_2", "mlra_4", "gqa", "tpa", "gta"])
def test_variant_inference(tmp_path: Path, variant: str) -> None:
    state, hf = official_state(variant)
    directory = write_official(tmp_path / variant, state, hf, shards=2)
    cfg, _ = resolve_official_config(directory)
    assert cfg.name == variant
    grid = {"mla": (1, 1), "gla_2": (1, 2), "mlra_2": (2, 2), "mlra_4": (4, 1)}
    if variant in grid:
        assert (cfg.latent_branches, cfg.latent_groups) == grid[variant]
        assert (cfg.head_dim, cfg.rope_dim, cfg.kv_lora_rank) == (DN, DR, DC)


def test_inference_without_optional_config_fields(tmp_path: Path) -> None:
    """Latent, MFA and TPA shapes determine every width; config.json may omit them."""
    for variant in ("mlra_2", "mfa", "tpa"):
        state, hf = official_state(variant)
        for k in ("n_head", "qk_nope_head_dim", "qk_rope_head_dim", "kv_lora_rank",
                  "q_lora_rank", "head_dim", "rank", "q_rank", "share_q_dim"):
            hf.pop(k, None)
        cfg, _ = resolve_official_config(write_official(tmp_path / variant, state, hf, 2))
        assert cfg.name == variant and cfg.n_heads == H
