"""The latent family: MLA, GLA-G and MLRA-B as one layer with a (branches x groups) grid.

The KV latent (width d_c) is split into ``branches * groups`` latent heads of width
w = d_c / (branches * groups); latent head l = n * groups + g (branch n, group g) has its own
RMSNorm and scale sqrt(d / w). Query heads are split into ``groups`` contiguous groups. Query
head i of group g attends, once per branch n, to latent head (n, g) with key
[k_nope(n, g, i) ; k_rope] and value v(n, g, i); branch outputs are summed and scaled by
1/sqrt(branches) (paper, section 3).

    MLA = (1, 1), GLA-2 = (1, 2), GLA-4 = (1, 4), MLRA-2 = (2, 2), MLRA-4 = (4, 1).

The up-projection is stored as one tensor ``wkv_b`` of shape (latent heads, w, heads_per_group *
2 * head_dim) -- the official (block, in, out) layout -- whose last dimension is head-major with
[k_nope | v] per head. Cache per token: the latent heads (d_c) plus the shared RoPE key.

Einsum axes in this file: b batch, t query positions, s key positions, n branch, g group,
i query head within its group, w latent width, d head width, r RoPE width, l latent head
(n * groups + g), o up-projection outputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mlra import kernels
from mlra.attention.base import Attention, KVState
from mlra.attention.family import (
    AttentionFamily,
    AttentionShard,
    CacheLayout,
    RowCacheLayout,
    register,
)
from mlra.attention.standard import heads_text
from mlra.config import ModelConfig
from mlra.errors import ConfigError
from mlra.kernels import latent_train_attention_up, up_kernel_supports
from mlra.layers import RMSNorm, Rotary, rms_norm
from mlra.slicing import TensorSlice, divisors, merge, rows

LatentQuery = tuple[torch.Tensor, torch.Tensor]
"""(q_nope [batch, time, heads, head_dim], q_rope [batch, time, heads, rope_dim])."""


class UpProjection(nn.Module):
    """The up-projection ``wkv_b`` (latent heads, w, heads_per_group * 2 * head_dim) as a module,
    so that adapters can wrap it (``mlra.hf.peft``): every use reads the weight by calling it,
    ``up(dtype)``. Its state-dict key is the module's own name (``...attn.wkv_b``), the key of
    the bare parameter it replaces, so checkpoints are unchanged."""

    def __init__(self, latent_heads: int, width: int, out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(latent_heads, width, out))
        self._register_state_dict_hook(_weight_as_module_key)

    def forward(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.weight if dtype is None else self.weight.to(dtype)


def _weight_as_module_key(module, state_dict, prefix, local_metadata) -> None:
    state_dict[prefix[:-1]] = state_dict.pop(prefix + "weight")


def _up_projection_key_as_weight(state_dict, prefix, *args) -> None:
    """Load pre-hook of the layer holding ``wkv_b`` (a child's hook never sees the key: the
    parent passes each child only the keys under ``child.``)."""
    if prefix + "wkv_b" in state_dict:
        state_dict[prefix + "wkv_b.weight"] = state_dict.pop(prefix + "wkv_b")


class LatentAttention(Attention):
    """MLA / GLA / MLRA: a grid of latent heads with a shared decoupled RoPE key."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        d, H, dh, dr = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.rope_dim
        self.branches, self.groups = cfg.latent_branches, cfg.latent_groups
        self.n_latent, self.width = cfg.n_latent_heads, cfg.latent_head_dim
        self.heads_per_group = H // self.groups
        self.wq_a = nn.Linear(d, cfg.q_lora_rank, bias=False)
        self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
        self.wq_b = nn.Linear(cfg.q_lora_rank, H * (dh + dr), bias=False)
        self.wkv_a = nn.Linear(d, cfg.kv_lora_rank + dr, bias=False)
        self.kv_norm = nn.Parameter(torch.ones(self.n_latent, self.width))
        self.wkv_b = UpProjection(self.n_latent, self.width, self.heads_per_group * 2 * dh)
        self._register_load_state_dict_pre_hook(_up_projection_key_as_weight)
        scaled = cfg.latent_scaling
        self.q_scale = math.sqrt(d / cfg.q_lora_rank) if scaled else 1.0
        self.kv_scale = math.sqrt(d / self.width) if scaled else 1.0
        self.out_scale = 1.0 / math.sqrt(self.branches) if scaled else 1.0
        if cfg.output_scale is not None:
            self.out_scale = cfg.output_scale

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.normal_(self.wkv_b.weight, std=self.cfg.init_std)
        nn.init.ones_(self.kv_norm)

    # -- projections -----------------------------------------------------------------------
    def query(self, x: torch.Tensor, rope: Rotary) -> LatentQuery:
        B, T, _ = x.shape
        dh = self.cfg.head_dim
        c_q = self.q_norm(self.wq_a(x)) * self.q_scale
        q = self.wq_b(c_q).view(B, T, self.cfg.n_heads, dh + self.cfg.rope_dim)
        return q[..., :dh], rope.rotate(q[..., dh:])

    def kv_state(self, x: torch.Tensor, rope: Rotary) -> KVState:
        """``latent`` [batch, time, latent heads, w] (normed, scaled) and ``k_rope`` [.., rope]."""
        B, T, _ = x.shape
        c = self.wkv_a(x)
        dc = self.cfg.kv_lora_rank
        latent = c[..., :dc].reshape(B, T, self.n_latent, self.width)
        latent = rms_norm(latent, self.kv_norm, self.cfg.norm_eps) * self.kv_scale
        return {"latent": latent, "k_rope": rope.rotate(c[..., dc:])}

    def up_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK and W_UV, each [branches, groups, w, heads_per_group, head_dim]: latent head
        (n, g) maps to the NoPE key / value of head i of group g as ``latent @ W[n, g, :, i]``."""
        dh = self.cfg.head_dim
        w = self.wkv_b().view(self.branches, self.groups, self.width, self.heads_per_group, 2 * dh)
        return w[..., :dh], w[..., dh:]

    # -- training form ---------------------------------------------------------------------
    def attend(self, q: LatentQuery, state: KVState, mask: torch.Tensor | None) -> torch.Tensor:
        """Expanded form. Causal on CUDA: the fused Triton training attention, which reads each
        branch's K/V and the shared RoPE key as they are (:func:`latent_train_attention_up`: the
        up-projection inside the operator, recomputed in the backward).
        Otherwise (masks, CPU): materialise per-branch K/V and run all branches in one SDPA
        call (branches stacked on the batch axis)."""
        q_nope, q_rope = q
        latent, k_rope = state["latent"], state["k_rope"]
        B, T, H, dh = q_nope.shape
        S, nb, dr = latent.shape[1], self.branches, self.cfg.rope_dim
        w_ukv = self.wkv_b(latent.dtype)
        if mask is None and up_kernel_supports(q_nope, q_rope, latent, w_ukv, k_rope, nb):
            o = latent_train_attention_up(q_nope, q_rope, latent, w_ukv, k_rope, nb,
                                          self.cfg.softmax_scale, self.out_scale)
            return o.reshape(B, T, H * dh)  # the fused kernel (CUDA, causal)
        kv = torch.einsum("bslw,lwo->bslo", latent, w_ukv)
        kv = kv.reshape(B, S, nb, H, 2 * dh)  # latent l = n*groups + g; head = g*Hg + i
        k = torch.cat([kv[..., :dh], k_rope[:, :, None, None, :].expand(B, S, nb, H, dr)], -1)
        v = kv[..., dh:]
        qf = torch.cat([q_nope, q_rope], dim=-1).transpose(1, 2)  # [B, H, T, dh + dr]
        qf = qf[:, None].expand(B, nb, H, T, dh + dr).reshape(B * nb, H, T, dh + dr)
        k = k.permute(0, 2, 3, 1, 4).reshape(B * nb, H, S, dh + dr)
        v = v.permute(0, 2, 3, 1, 4).reshape(B * nb, H, S, dh)
        if mask is not None:
            mask = mask[:, None].expand(B, nb, *mask.shape[1:]).reshape(B * nb, *mask.shape[1:])
        # Zero-pad V to the q/k width: the fused SDPA kernels (flash on CPU and GPU) need equal
        # widths, and the generic fallback is several times slower. The pad columns stay zero.
        v = torch.nn.functional.pad(v, (0, dr))
        o = torch.nn.functional.scaled_dot_product_attention(
            qf, k, v, attn_mask=mask, is_causal=mask is None, scale=self.cfg.softmax_scale
        )
        o = o[..., :dh].reshape(B, nb, H, T, dh).sum(dim=1) * self.out_scale
        return o.transpose(1, 2).reshape(B, T, H * dh)

    def score_logits(self, x: torch.Tensor, rope: Rotary) -> torch.Tensor:
        q_nope, q_rope = self.query(x, rope)
        state = self.kv_state(x, rope)
        B, T, H, dh = q_nope.shape
        nb, G, Hg, W = self.branches, self.groups, self.heads_per_group, self.width
        w_uk, _ = self.up_weights()  # [nb, G, W, Hg, dh]
        lat = state["latent"].reshape(B, T, nb, G, W)
        k_nope = torch.einsum("bsngw,ngwid->bsngid", lat, w_uk.to(lat.dtype))
        nope = torch.einsum("btgid,bsngid->bngits", q_nope.reshape(B, T, G, Hg, dh), k_nope)
        rot = torch.einsum("btgir,bsr->bgits", q_rope.reshape(B, T, G, Hg, -1), state["k_rope"])
        return ((nope + rot[:, None]) * self.cfg.softmax_scale).reshape(B, nb * H, T, T)

    # -- absorbed (decode) form -----------------------------------------------------------------
    def absorb_query(self, q: LatentQuery) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries in latent space: ``q_abs`` [batch, time, branches, groups, Hg, w] and the
        RoPE query [batch, time, groups, Hg, rope]. No per-head K or V is formed."""
        q_nope, q_rope = q
        B, T, _, dh = q_nope.shape
        G, Hg = self.groups, self.heads_per_group
        w_uk, _ = self.up_weights()
        q_abs = torch.einsum(
            "btgid,ngwid->btngiw", q_nope.reshape(B, T, G, Hg, dh), w_uk.to(q_nope.dtype)
        )
        return q_abs, q_rope.reshape(B, T, G, Hg, -1)

    def decode_query(self, q: LatentQuery) -> tuple[torch.Tensor, torch.Tensor]:
        return self.absorb_query(q)

    def paged_attend(self, q, pools, layout, block_table, seq_lens):
        """Per latent head: MQA of the absorbed queries over the ``[latent heads | rope key]``
        rows, one kernel call per query-head group g over the ``branches`` latent heads (n, g)
        it reads (all of them for MLA/MLRA-B, sharing the RoPE key; one per call for GLA-G).
        Returns ``z`` [B, T, branches, groups, Hg, w] (fp32); no per-head K or V is formed."""
        q_abs, q_rope = q
        G, nb = self.groups, self.branches
        zs = []
        for g in range(G):
            offsets = [layout.latent_offsets[n * G + g] for n in range(nb)]
            z, _ = kernels.paged_latent_decode(
                q_abs[:, :, :, g].contiguous(), q_rope[:, :, g].contiguous(), pools["rows"],
                block_table, seq_lens, offsets, layout.rope_offset, self.cfg.softmax_scale,
            )  # [B, T, nb, Hg, w]
            zs.append(z)
        return zs[0].unsqueeze(3) if G == 1 else torch.stack(zs, dim=3)

    def decode_output(self, z: torch.Tensor) -> torch.Tensor:
        """W_UV per head, then the sum over branches times ``out_scale``."""
        B, T = z.shape[:2]
        _, w_uv = self.up_weights()  # [nb, G, w, Hg, dh]
        o = torch.einsum("btngiw,ngwid->btgid", z.to(w_uv.dtype), w_uv) * self.out_scale
        return o.reshape(B, T, self.cfg.attn_out_dim)

    def attend_absorbed(
        self, q: LatentQuery, state: KVState, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Weight-absorbed attention (the decode form) over a dense state, a pure-PyTorch
        reference: per latent head (n, g), MQA of the absorbed queries over
        [k_rope ; latent(n, g)] with value latent(n, g), then :meth:`decode_output`."""
        latent, k_rope = state["latent"], state["k_rope"]
        B, S = latent.shape[:2]
        q_abs, q_rope = self.absorb_query(q)
        T = q_abs.shape[1]
        f = torch.promote_types(q_abs.dtype, torch.float32)  # fp32 math (fp64 stays fp64)
        lat = latent.reshape(B, S, self.branches, self.groups, self.width).to(f)
        logits = torch.einsum("btngiw,bsngw->bngits", q_abs.to(f), lat)
        logits = logits + torch.einsum("btgir,bsr->bgits", q_rope.to(f), k_rope.to(f))[:, None]
        logits = logits * self.cfg.softmax_scale
        if mask is None:
            mask = torch.ones(T, S, dtype=torch.bool, device=latent.device).tril(S - T)
            mask = mask[None, None]
        logits = logits.masked_fill(~mask[:, :, None, None], float("-inf"))
        p = torch.softmax(logits, dim=-1)
        z = torch.einsum("bngits,bsngw->btngiw", p, lat)
        return self.decode_output(z).to(q_abs.dtype)


# ----------------------------------------------------------------------------- the family
LatentCacheLayout = RowCacheLayout
"""The latent family's cache: rows of ``[latent heads | rope key]`` (a RowCacheLayout)."""


def latent_split(cfg: ModelConfig, tp: int) -> tuple[int, int, int] | None:
    """(group splits, branch splits, head splits within a latent head) for ``tp``, or None.

    Groups split first (each rank gets G/t groups with their query heads and all branches);
    once every group is on its own rank, the branches (each rank gets B/(t/G) latent heads of
    one group and all of the group's query heads; branch outputs meet in the all-reduce);
    beyond one latent head per rank, the query heads of a latent head (the latent head is then
    replicated on the ranks sharing it). MLA (1 x 1) replicates its latent and splits heads."""
    G, nb = cfg.latent_groups, cfg.latent_branches
    Hg = cfg.n_heads // G
    if G % tp == 0:
        return tp, 1, 1
    if tp % G == 0 and nb % (tp // G) == 0:
        return G, tp // G, 1
    if tp % (G * nb) == 0 and Hg % (tp // (G * nb)) == 0:
        return G, nb, tp // (G * nb)
    return None


class LatentFamily(AttentionFamily):
    name = "latent"
    module = LatentAttention
    required = ("rope_dim", "q_lora_rank", "kv_lora_rank", "latent_branches", "latent_groups")
    rope = "partial"
    official_key = "kv_a_proj_with_mqa.weight"
    official_order = 10
    official_renames = {"q_a_proj": "wq_a", "q_a_layernorm": "q_norm", "q_b_proj": "wq_b",
                        "kv_a_proj_with_mqa": "wkv_a"}

    def validate(self, cfg: ModelConfig) -> None:
        if cfg.rope_dim % 2:
            raise ConfigError(f"rope_dim must be even for rotate-half RoPE, got {cfg.rope_dim}")
        n_latent = cfg.latent_branches * cfg.latent_groups
        if cfg.kv_lora_rank % n_latent:
            raise ConfigError(
                f"kv_lora_rank ({cfg.kv_lora_rank}) must be divisible by the number of "
                f"latent heads latent_branches*latent_groups = {n_latent}"
            )
        if cfg.n_heads % cfg.latent_groups:
            raise ConfigError(
                f"n_heads ({cfg.n_heads}) must be divisible by latent_groups "
                f"({cfg.latent_groups}): each group of query heads reads one latent head"
            )

    def softmax_scale(self, cfg: ModelConfig) -> float:
        return 1.0 / math.sqrt(cfg.head_dim + cfg.rope_dim)

    def param_count(self, cfg: ModelConfig) -> int:
        d, H, dh = cfg.d_model, cfg.n_heads, cfg.head_dim
        qr, dc, dr = cfg.q_lora_rank, cfg.kv_lora_rank, cfg.rope_dim
        up = dc * (H // cfg.latent_groups) * 2 * dh
        return d * qr + qr + qr * H * (dh + dr) + d * (dc + dr) + dc + up

    def variant_name(self, cfg: ModelConfig) -> str:
        nb, g = cfg.latent_branches, cfg.latent_groups
        if (nb, g) == (1, 1):
            return "mla"
        if nb == 1:
            return f"gla_{g}"
        if (nb, g) in ((2, 2), (4, 1)):
            return f"mlra_{nb}"
        return f"latent_b{nb}_g{g}"

    def describe(self, cfg: ModelConfig) -> str:
        nb, G = cfg.latent_branches, cfg.latent_groups
        return (f"{nb} branch{'es' if nb > 1 else ''} x {G} group{'s' if G > 1 else ''} of latent "
                f"heads of width {cfg.latent_head_dim}, {cfg.n_heads} query heads")

    def cache_layout(self, cfg: ModelConfig) -> CacheLayout:
        return RowCacheLayout.of("latent", cfg.n_latent_heads, cfg.latent_head_dim, cfg.rope_dim)

    def decode_flops(self, cfg: ModelConfig) -> int:
        """Per latent head, its query heads score [latent ; rope] and sum p . latent."""
        w, dr = cfg.latent_head_dim, cfg.rope_dim
        return cfg.n_latent_heads * (cfg.n_heads // cfg.latent_groups) * (2 * (w + dr) + 2 * w)

    def tp_degrees(self, cfg: ModelConfig) -> list[int]:
        G, nb = cfg.latent_groups, cfg.latent_branches
        found = set(divisors(G)) | {G * k for k in divisors(nb)}
        found |= {G * nb * m for m in divisors(cfg.n_heads // G)}
        return sorted(found)

    def tp_shard(self, cfg: ModelConfig, tp: int, rank: int) -> AttentionShard:
        """The query down-projection (``wq_a``, ``q_norm``) is replicated; ``wq_b`` rows,
        ``wkv_b`` head columns, ``wo`` columns and the gate rows follow the rank's query heads;
        ``wkv_a`` rows, ``kv_norm`` rows and ``wkv_b`` blocks follow its latent heads; the RoPE
        key rows of ``wkv_a`` are on every rank; the full model's 1/sqrt(branches) is kept
        through ``output_scale``."""
        G, nb, H = cfg.latent_groups, cfg.latent_branches, cfg.n_heads
        dh, dr, w, dc = cfg.head_dim, cfg.rope_dim, cfg.latent_head_dim, cfg.kv_lora_rank
        Hg = H // G
        split = latent_split(cfg, tp)
        assert split is not None, "tp_shard called with a degree outside tp_degrees"
        tg, tb, tm = split
        gi, bi, mi = rank // (tb * tm), (rank // tm) % tb, rank % tm
        Gl, Bl, Hgl = G // tg, nb // tb, Hg // tm
        g0, b0, i0 = gi * Gl, bi * Bl, mi * Hgl
        Hl = Gl * Hgl
        h0 = g0 * Hg + i0
        latents = [n * G + g for n in range(b0, b0 + Bl) for g in range(g0, g0 + Gl)]
        lat_rows = merge([(j, j + 1) for j in latents])
        full_scale = 1.0 / math.sqrt(nb) if cfg.latent_scaling else 1.0
        over = {
            "n_heads": Hl, "latent_branches": Bl, "latent_groups": Gl,
            "kv_lora_rank": Bl * Gl * w,
            "output_scale": cfg.output_scale if cfg.output_scale is not None else full_scale,
        }
        width_rows = tuple((a * w, b * w) for a, b in lat_rows)
        slices = {
            "wq_b.weight": rows(0, h0 * (dh + dr), (h0 + Hl) * (dh + dr)),
            "wkv_a.weight": TensorSlice(((0, merge([*width_rows, (dc, dc + dr)])),)),
            "kv_norm": TensorSlice(((0, lat_rows),)),
            "wkv_b": TensorSlice(((0, lat_rows), (2, ((i0 * 2 * dh, (i0 + Hgl) * 2 * dh),)))),
            "wo.weight": rows(1, h0 * dh, (h0 + Hl) * dh),
        }
        if cfg.output_gate:
            slices["wg.weight"] = rows(0, h0 * dh, (h0 + Hl) * dh)
        if tm > 1:
            strategy = (f"one latent head per rank, replicated on {tm} ranks, its query heads "
                        "split" if G * nb > 1 else
                        "latent replicated on every rank, query heads split")
        elif tb > 1:
            strategy = (f"{Bl} latent head{'s' if Bl > 1 else ''} of one group per rank "
                        "(branches split), all the group's query heads; branch outputs summed by "
                        "the all-reduce")
        else:
            strategy = (f"{Gl} group{'s' if Gl > 1 else ''} of query heads per rank with all "
                        "their latent heads")
        text = f"latent heads {list(latents)} of {G * nb}, {heads_text(h0, Hl, H)}"
        return AttentionShard(over, slices, text, strategy)

    # -- published checkpoints ---------------------------------------------------------------
    def official_infer(self, attn, out_in, checker, layout):
        kind, norms, ups = _official_blocks(attn, checker)
        for key in norms + ups + ["q_a_proj.weight", "q_b_proj.weight"]:
            if key not in attn:
                raise checker.fail(f"key 'transformer.h.0.attn.{key}' is missing")
        n_blocks = len(norms)
        width = attn[norms[0]][0]
        dc = n_blocks * width
        dr = attn["kv_a_proj_with_mqa.weight"][0] - dc
        if dr <= 0:
            raise checker.fail(
                f"kv_a_proj_with_mqa has {attn['kv_a_proj_with_mqa.weight'][0]} rows, not more "
                f"than the latent width {dc}"
            )
        q_rows = attn["q_b_proj.weight"][0]  # H * (dn + dr); c_proj takes H * dn
        H = checker.get("n_head")
        if H is None:
            H = checker.exact_div(q_rows - out_in, dr, "n_head from q_b_proj and c_proj")
        dn = checker.exact_div(out_in, H, "qk_nope_head_dim from c_proj inputs / n_head")
        if q_rows != H * (dn + dr):
            raise checker.fail(
                f"q_b_proj has {q_rows} rows, expected n_head*(nope+rope)={H * (dn + dr)}"
            )
        if kind == "raw":
            out = attn["kv_b_proj"][2]
            groups = checker.exact_div(H * 2 * dn, out, "latent groups from kv_b_proj width")
            branches = checker.exact_div(n_blocks, groups, "latent branches (blocks / groups)")
        else:
            branches, groups = 1, n_blocks
        checker.check("n_head", H)
        checker.check("qk_nope_head_dim", dn)
        checker.check("qk_rope_head_dim", dr)
        checker.check("kv_lora_rank", dc)
        checker.check("q_lora_rank", attn["q_a_proj.weight"][0])
        layout.update(latent=kind, norms=norms, ups=ups)
        return dict(
            family=self.name, n_heads=H, head_dim=dn, rope_dim=dr, kv_lora_rank=dc,
            q_lora_rank=attn["q_a_proj.weight"][0], latent_branches=branches,
            latent_groups=groups,
        )

    def official_extra(self, cfg, layout, take):
        """``kv_norm`` [latent heads, w] and ``wkv_b`` [latent heads, w, out]. Our layout is
        the official raw (block, in, out) one; MLA's and GLA-G's Linear (out, in) weights are
        transposed and stacked. Official latent block j is our latent head j."""
        n, w = cfg.n_latent_heads, cfg.latent_head_dim
        out = cfg.n_heads // cfg.latent_groups * 2 * cfg.head_dim
        norms, ups = layout["norms"], layout["ups"]
        if layout["latent"] == "raw":
            norm = torch.stack([take(k, (w,)) for k in norms])
            up = take(ups[0], (n, w, out))
        elif layout["latent"] == "linear":  # MLA: one norm over all latent dims, Linear (out, in)
            norm, up = take(norms[0], (w,)).reshape(1, w), take(ups[0], (out, w)).t()[None]
        else:  # GLA-G split: per-block Linear
            norm = torch.stack([take(k, (w,)) for k in norms])
            up = torch.stack([take(k, (out, w)).t() for k in ups])
        return {"kv_norm": norm, "wkv_b": up}


def _official_blocks(attn, checker) -> tuple[str, list, list]:
    """(layout, official norm names, official up-projection names) of a published layer."""
    if "kv_b_proj.weight" in attn:
        return "linear", ["kv_a_layernorm.weight"], ["kv_b_proj.weight"]
    if "kv_b_proj_1.weight" in attn:
        n = 1
        while f"kv_b_proj_{n + 1}.weight" in attn:
            n += 1
        return (
            "split",
            [f"kv_a_layernorm_{k}.weight" for k in range(1, n + 1)],
            [f"kv_b_proj_{k}.weight" for k in range(1, n + 1)],
        )
    if "kv_b_proj" in attn:
        n = attn["kv_b_proj"][0] if len(attn["kv_b_proj"]) == 3 else 0
        if n == 0:
            raise checker.fail(
                f"raw kv_b_proj has shape {tuple(attn['kv_b_proj'])}, expected (blocks, in, out)"
            )
        return "raw", [f"kv_a_layernorms.{j}.weight" for j in range(n)], ["kv_b_proj"]
    raise checker.fail("no kv_b_proj weights in layer 0 of a latent-family checkpoint")


register(LatentFamily())
