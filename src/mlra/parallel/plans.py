"""Tensor-parallel sharding plans: what each rank of a TP-``tp`` group holds, per variant.

A plan maps every rank to a :class:`RankShard`: the *local* :class:`~mlra.config.ModelConfig` that
describes the rank's shard (so a shard is an ordinary :class:`~mlra.model.Transformer` and the
cache, decoder and kernels run on it unchanged), and for every sharded parameter of the full
model the index ranges the rank takes (:class:`TensorSlice`). Parameters a plan does not list
are replicated. Partial outputs of attention and MLP are summed by one all-reduce each
(``Block.reduce``); embeddings and the tied head are vocab-parallel.

Rules (TP degree t, rank r):

- Latent family (MLA / GLA / MLRA: a grid of ``branches x groups`` latent heads): split the
  groups first (each rank gets G/t groups with their query heads and all branches); once every
  group is on its own rank, split the branches (each rank gets B/(t/G) latent heads of one group
  and computes all of the group's query heads against them; branch outputs meet in the
  all-reduce, the full model's 1/sqrt(B) kept through ``output_scale``); beyond one latent head
  per rank, split the query heads of a latent head (the latent is then replicated on the ranks
  sharing it). MLA (1 x 1) therefore replicates its latent on every rank and splits the heads.
  The query down-projection (``wq_a``, ``q_norm``) is replicated; ``wq_b`` rows, ``wkv_b``
  head columns, ``wo`` columns and the gate rows follow the rank's query heads; ``wkv_a`` rows,
  ``kv_norm`` rows and ``wkv_b`` blocks follow its latent heads; the RoPE key rows of ``wkv_a``
  are on every rank.
- MHA / MQA / GQA: query heads split; K/V heads split, or replicated (rank r uses K/V head
  ``r * n_kv // t``) once t exceeds them, as serving systems do. GTA the same with the shared
  RoPE key replicated.
- MFA: query heads split, the single K and V heads (and the query down-projection) replicated.
- TPA: query heads split (the A factors of q, k, v), the B factors replicated.
- MLP (SwiGLU) column- then row-parallel: ``w_gate`` / ``w_up`` rows and ``w_down`` columns,
  split as evenly as possible (the widths need not divide).
- Embedding and tied head vocab-parallel: rank r holds rows ``[r*V_l, (r+1)*V_l)`` of the
  embedding, V_l = ceil(V / t), zero-padded past V. Lookups are masked and all-reduced; logits
  are all-gathered (and trimmed to V) so every rank sees the full distribution.

A degree a variant cannot use raises :class:`~mlra.errors.ConfigError` naming the allowed ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from mlra.config import ModelConfig
from mlra.errors import ConfigError

Ranges = tuple[tuple[int, int], ...]
"""Half-open index ranges ``((start, stop), ...)`` along one dimension, taken in order."""


@dataclass(frozen=True)
class TensorSlice:
    """Which part of a full-model tensor a rank holds.

    ``dims`` maps a dimension to the ranges taken along it (in order; the pieces are
    concatenated); dimensions not listed are taken whole. ``pad`` = (dim, size) zero-pads the
    result along ``dim`` to ``size`` (the vocabulary padding of the last rank).
    """

    dims: tuple[tuple[int, Ranges], ...]
    pad: tuple[int, int] | None = None

    def shape(self, full_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the slice of a tensor of ``full_shape``."""
        shape = list(full_shape)
        for dim, ranges in self.dims:
            shape[dim] = sum(b - a for a, b in ranges)
        if self.pad is not None:
            shape[self.pad[0]] = self.pad[1]
        return tuple(shape)


@dataclass(frozen=True)
class RankShard:
    """What one rank holds: its local config, the slices of the sharded parameters (full-model
    parameter name -> :class:`TensorSlice`; absent names are replicated), its vocabulary range
    and a one-line description."""

    rank: int
    world_size: int
    config: ModelConfig
    slices: dict[str, TensorSlice]
    vocab_start: int
    vocab_stop: int
    description: str

    @property
    def cache_elements_per_token(self) -> int:
        """KV-cache elements this rank stores per token and per layer."""
        return cache_elements(self.config)

    def cache_bytes_per_token(self, bytes_per_element: int = 2) -> int:
        """Cache bytes per token over all layers on this rank (bf16 by default)."""
        return self.cache_elements_per_token * self.config.n_layers * bytes_per_element


@dataclass(frozen=True)
class TPPlan:
    """A sharding plan of ``config`` over ``tp`` ranks; ``shards[r]`` is rank r's part."""

    config: ModelConfig
    tp: int
    strategy: str
    shards: tuple[RankShard, ...] = field(repr=False)

    def shard(self, rank: int) -> RankShard:
        """Rank ``rank``'s shard (ConfigError when out of range)."""
        if not 0 <= rank < self.tp:
            raise ConfigError(f"rank {rank} is outside a tensor-parallel group of {self.tp}")
        return self.shards[rank]

    def summary(self) -> str:
        """Multi-line human-readable description of the plan."""
        lines = [f"{self.config.name} at TP {self.tp}: {self.strategy}"]
        for s in self.shards:
            lines.append(
                f"  rank {s.rank}: {s.description}; cache {s.cache_elements_per_token} "
                f"elements/token/layer"
            )
        return "\n".join(lines)


def cache_elements(cfg: ModelConfig) -> int:
    """Elements one token occupies in a layer's KV cache of a model with config ``cfg``."""
    dh = cfg.head_dim
    if cfg.attention == "standard":
        return 2 * cfg.n_kv_heads * dh
    if cfg.attention == "gta":
        return cfg.n_kv_heads * dh + cfg.rope_dim
    if cfg.attention == "mfa":
        return 2 * dh
    if cfg.attention == "tpa":
        return 2 * cfg.tpa_rank * (cfg.n_heads + dh)
    return cfg.kv_lora_rank + cfg.rope_dim


# ------------------------------------------------------------------------------- degrees
def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def _latent_split(cfg: ModelConfig, tp: int) -> tuple[int, int, int] | None:
    """(group splits, branch splits, head splits within a latent) for ``tp``, or None."""
    G, B = cfg.latent_groups, cfg.latent_branches
    Hg = cfg.n_heads // G
    if G % tp == 0:
        return tp, 1, 1
    if tp % G == 0 and B % (tp // G) == 0:
        return G, tp // G, 1
    if tp % (G * B) == 0 and Hg % (tp // (G * B)) == 0:
        return G, B, tp // (G * B)
    return None


def allowed_degrees(cfg: ModelConfig) -> list[int]:
    """Every tensor-parallel degree the plans support for ``cfg``."""
    H = cfg.n_heads
    if cfg.attention == "latent":
        G, B = cfg.latent_groups, cfg.latent_branches
        found = set(_divisors(G)) | {G * k for k in _divisors(B)}
        found |= {G * B * m for m in _divisors(H // G)}
        return sorted(found)
    if cfg.attention in ("standard", "gta"):
        kv = cfg.n_kv_heads
        return [t for t in _divisors(H) if kv % t == 0 or t % kv == 0]
    return _divisors(H)


def check_degree(cfg: ModelConfig, tp: int) -> None:
    """ConfigError naming the allowed degrees when ``cfg`` cannot be split ``tp`` ways."""
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
        raise ConfigError(f"the tensor-parallel degree must be a positive integer, got {tp!r}")
    allowed = allowed_degrees(cfg)
    if tp not in allowed:
        raise ConfigError(
            f"{cfg.name} ({_shape_text(cfg)}) cannot be split {tp} ways; allowed "
            f"tensor-parallel degrees: {', '.join(map(str, allowed))}"
        )


def _shape_text(cfg: ModelConfig) -> str:
    if cfg.attention == "latent":
        B, G = cfg.latent_branches, cfg.latent_groups
        return (f"{B} branch{'es' if B > 1 else ''} x {G} group{'s' if G > 1 else ''} of latent "
                f"heads, {cfg.n_heads} query heads")
    if cfg.attention in ("standard", "gta"):
        return f"{cfg.n_heads} query heads, {cfg.n_kv_heads} K/V heads"
    return f"{cfg.n_heads} query heads"


# ------------------------------------------------------------------------------- plans
def make_plan(cfg: ModelConfig, tp: int) -> TPPlan:
    """The sharding plan of ``cfg`` at degree ``tp`` (ConfigError if not allowed)."""
    check_degree(cfg, tp)
    shards = []
    strategy = ""
    for rank in range(tp):
        attn_over, attn_slices, text, strategy = _attention_shard(cfg, tp, rank)
        mlp_over, mlp_slices = _mlp_shard(cfg, tp, rank)
        vocab_over, vocab_slices, v0, v1 = _vocab_shard(cfg, tp, rank)
        slices: dict[str, TensorSlice] = dict(vocab_slices)
        for i in range(cfg.n_layers):
            for name, sl in attn_slices.items():
                slices[f"layers.{i}.attn.{name}"] = sl
            for name, sl in mlp_slices.items():
                slices[f"layers.{i}.mlp.{name}"] = sl
        local = replace(cfg, **attn_over, **mlp_over, **vocab_over)
        _check_local_scales(cfg, local)
        desc = f"{text}; MLP {local.intermediate_size} of {cfg.intermediate_size}; vocab {v0}:{v1}"
        shards.append(RankShard(rank, tp, local, slices, v0, v1, desc))
    return TPPlan(cfg, tp, strategy, tuple(shards))


def _one(dim: int, start: int, stop: int) -> TensorSlice:
    return TensorSlice(((dim, ((start, stop),)),))


def _even_range(n: int, parts: int, index: int) -> tuple[int, int]:
    """The ``index``-th of ``parts`` near-equal contiguous pieces of range(n)."""
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def _mlp_shard(cfg: ModelConfig, tp: int, rank: int):
    a, b = _even_range(cfg.intermediate_size, tp, rank)
    if b <= a:
        raise ConfigError(
            f"intermediate_size {cfg.intermediate_size} is too small to split {tp} ways"
        )
    slices = {"w_gate.weight": _one(0, a, b), "w_up.weight": _one(0, a, b),
              "w_down.weight": _one(1, a, b)}
    return {"intermediate_size": b - a}, slices


def _vocab_shard(cfg: ModelConfig, tp: int, rank: int):
    V = cfg.vocab_size
    per = math.ceil(V / tp)
    start = min(rank * per, V)
    stop = min(start + per, V)
    sl = TensorSlice(((0, ((start, stop),)),), pad=(0, per) if stop - start < per else None)
    return {"vocab_size": per}, {"embed.weight": sl}, start, stop


def _heads_text(h0: int, n: int, total: int) -> str:
    return f"query heads {h0}-{h0 + n - 1} of {total}" if n > 1 else f"query head {h0} of {total}"


def _attention_shard(cfg: ModelConfig, tp: int, rank: int):
    """(local-config overrides, slices by name inside the attention module, description,
    strategy) of rank ``rank``."""
    dh, H = cfg.head_dim, cfg.n_heads
    if cfg.attention == "latent":
        return _latent_shard(cfg, tp, rank)
    Hl = H // tp
    h0 = rank * Hl
    out = {"wo.weight": _one(1, h0 * dh, (h0 + Hl) * dh)}
    if cfg.output_gate:
        out["wg.weight"] = _one(0, h0 * dh, (h0 + Hl) * dh)
    over: dict = {"n_heads": Hl}
    text = _heads_text(h0, Hl, H)
    if cfg.attention in ("standard", "gta"):
        kv = cfg.n_kv_heads
        if tp <= kv:
            kvl, k0 = kv // tp, rank * (kv // tp)
            strategy = "query and K/V heads split"
        else:
            kvl, k0 = 1, rank * kv // tp
            strategy = f"query heads split, each K/V head replicated on {tp // kv} ranks"
        over["n_kv_heads"] = kvl
        text += (f", K/V heads {k0}-{k0 + kvl - 1} of {kv}" if kvl > 1
                 else f", K/V head {k0} of {kv}")
        out["wq.weight"] = _one(0, h0 * dh, (h0 + Hl) * dh)
        kv_rows = _one(0, k0 * dh, (k0 + kvl) * dh)
        if cfg.attention == "standard":
            out["wk.weight"] = kv_rows
            out["wv.weight"] = kv_rows
        else:
            out["w_kv.weight"] = kv_rows
            strategy += ", shared RoPE key on every rank"
        return over, out, text, strategy
    if cfg.attention == "mfa":
        out["wq_b.weight"] = _one(0, h0 * dh, (h0 + Hl) * dh)
        return over, out, text + ", shared K/V heads", "query heads split, K/V replicated"
    # tpa
    R, Rq = cfg.tpa_rank, cfg.tpa_q_rank
    out["w_aq.weight"] = _one(0, h0 * Rq, (h0 + Hl) * Rq)
    out["w_ak.weight"] = _one(0, h0 * R, (h0 + Hl) * R)
    out["w_av.weight"] = _one(0, h0 * R, (h0 + Hl) * R)
    strategy = "query heads split (A factors), B factors replicated"
    return over, out, text + ", all B factors", strategy


def _merge(ranges: list[tuple[int, int]]) -> Ranges:
    """Merge adjacent ranges (keeps order)."""
    merged: list[tuple[int, int]] = []
    for a, b in ranges:
        if merged and merged[-1][1] == a:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return tuple(merged)


def _latent_shard(cfg: ModelConfig, tp: int, rank: int):
    G, B, H = cfg.latent_groups, cfg.latent_branches, cfg.n_heads
    dh, dr, w, dc = cfg.head_dim, cfg.rope_dim, cfg.latent_head_dim, cfg.kv_lora_rank
    Hg = H // G
    split = _latent_split(cfg, tp)
    assert split is not None  # check_degree ran first
    tg, tb, tm = split
    gi, bi, mi = rank // (tb * tm), (rank // tm) % tb, rank % tm
    Gl, Bl, Hgl = G // tg, B // tb, Hg // tm
    g0, b0, i0 = gi * Gl, bi * Bl, mi * Hgl
    Hl = Gl * Hgl
    h0 = g0 * Hg + i0
    latents = [b * G + g for b in range(b0, b0 + Bl) for g in range(g0, g0 + Gl)]
    lat_rows = _merge([(j, j + 1) for j in latents])
    full_scale = (1.0 / math.sqrt(B) if cfg.latent_scaling else 1.0)
    over = {
        "n_heads": Hl, "latent_branches": Bl, "latent_groups": Gl, "kv_lora_rank": Bl * Gl * w,
        "output_scale": cfg.output_scale if cfg.output_scale is not None else full_scale,
    }
    width_rows = tuple((a * w, b * w) for a, b in lat_rows)
    out = {
        "wq_b.weight": _one(0, h0 * (dh + dr), (h0 + Hl) * (dh + dr)),
        "wkv_a.weight": TensorSlice(((0, _merge([*width_rows, (dc, dc + dr)])),)),
        "kv_norm": TensorSlice(((0, lat_rows),)),
        "wkv_b": TensorSlice(((0, lat_rows), (2, ((i0 * 2 * dh, (i0 + Hgl) * 2 * dh),)))),
        "wo.weight": _one(1, h0 * dh, (h0 + Hl) * dh),
    }
    if cfg.output_gate:
        out["wg.weight"] = _one(0, h0 * dh, (h0 + Hl) * dh)
    if tm > 1:
        strategy = (f"one latent head per rank, replicated on {tm} ranks, its query heads split"
                    if G * B > 1 else "latent replicated on every rank, query heads split")
    elif tb > 1:
        strategy = (f"{Bl} latent head{'s' if Bl > 1 else ''} of one group per rank (branches "
                    "split), all the group's query heads; branch outputs summed by the all-reduce")
    else:
        strategy = (f"{Gl} group{'s' if Gl > 1 else ''} of query heads per rank with all "
                    "their latent heads")
    text = f"latent heads {list(latents)} of {G * B}, {_heads_text(h0, Hl, H)}"
    return over, out, text, strategy


def _check_local_scales(full: ModelConfig, local: ModelConfig) -> None:
    """Every scale derived from widths must be the full model's (else a shard computes
    something else); a failure here is a bug in a plan, not a user error."""
    assert local.softmax_scale == full.softmax_scale
    if full.attention == "latent":
        assert local.latent_head_dim == full.latent_head_dim  # kv_scale sqrt(d / width)
        assert local.q_lora_rank == full.q_lora_rank and local.d_model == full.d_model
