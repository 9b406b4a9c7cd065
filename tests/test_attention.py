"""Each attention family against an explicit, independent implementation of the paper's
formulas (loops over heads and branches, plain matmuls and softmaxes)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config

from mlra.attention import build_attention
from mlra.layers import Rotary, apply_rotary

T = 7


def _setup(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = tiny_config(name, **overrides)
    attn = build_attention(cfg).double()
    attn.reset_parameters()
    with torch.no_grad():  # make the norm weights non-trivial too
        for n, p in attn.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    x = torch.randn(1, T, cfg.d_model, dtype=torch.float64)
    return cfg, attn, x


def _rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoPE of rows x[t] at positions t = 0..T-1 (x: [T, width]), written out directly."""
    Tn, width = x.shape
    half = width // 2
    out = torch.empty_like(x)
    for t in range(Tn):
        for i in range(half):
            theta = t * base ** (-2 * i / width)
            c, s = math.cos(theta), math.sin(theta)
            out[t, i] = x[t, i] * c - x[t, i + half] * s
            out[t, i + half] = x[t, i + half] * c + x[t, i] * s
    return out


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def _causal_softmax_attention(q, k, v, scale):
    """q [T, dq], k [T, dq], v [T, dv] -> [T, dv] with a causal mask."""
    logits = (q @ k.T) * scale
    logits = logits.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    return torch.softmax(logits, -1) @ v


def _latent_reference(cfg, attn, x):
    """MLA / GLA / MLRA straight from the paper: per head i, per branch b,
    softmax(tau q_i [k_nope(b,g(i),i); k_rope]) v(b,g(i),i), summed over b, times 1/sqrt(B)."""
    d, H, dh, dr = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.rope_dim
    nb, G, w = cfg.latent_branches, cfg.latent_groups, cfg.latent_head_dim
    Hg = H // G
    x0 = x[0]
    c_q = _rms(x0 @ attn.wq_a.weight.T, attn.q_norm.weight) * math.sqrt(d / cfg.q_lora_rank)
    q = (c_q @ attn.wq_b.weight.T).view(T, H, dh + dr)
    ckv = x0 @ attn.wkv_a.weight.T
    k_rope = _rope(ckv[:, cfg.kv_lora_rank:])
    tau = 1 / math.sqrt(dh + dr)
    out = torch.zeros(T, H, dh, dtype=x.dtype)
    for i in range(H):
        g = i // Hg
        q_i = torch.cat([q[:, i, :dh], _rope(q[:, i, dh:])], -1)
        for b in range(nb):
            j = b * G + g  # latent head (b, g): contiguous block j of the latent
            block = _rms(ckv[:, j * w:(j + 1) * w], attn.kv_norm[j]) * math.sqrt(d / w)
            up = attn.wkv_b[j][:, (i % Hg) * 2 * dh:(i % Hg + 1) * 2 * dh]  # (w, [k_nope|v])
            k = torch.cat([block @ up[:, :dh], k_rope], -1)
            v = block @ up[:, dh:]
            out[:, i] += _causal_softmax_attention(q_i, k, v, tau)
    out = out / math.sqrt(nb)
    return (out.reshape(T, H * dh) @ attn.wo.weight.T)[None]


@pytest.mark.parametrize("name", ["mla", "gla_2", "gla_4", "mlra_2", "mlra_4"])
def test_latent_family_matches_explicit_branch_formula(name):
    cfg, attn, x = _setup(name)
    rope = Rotary(torch.arange(T)[None])
    torch.testing.assert_close(attn(x, rope), _latent_reference(cfg, attn, x), rtol=1e-9,
                               atol=1e-10)


def test_mlra4_is_four_softmaxes_not_mla():
    """MLRA-4 sums four separate softmaxes; feeding the same weights through one softmax over
    the concatenated latent (MLA's form) gives a different function."""
    cfg, attn, x = _setup("mlra_4")
    rope = Rotary(torch.arange(T)[None])
    ours = attn(x, rope)
    torch.testing.assert_close(ours, _latent_reference(cfg, attn, x), rtol=1e-9, atol=1e-10)
    q = attn.query(x, rope)
    state = attn.kv_state(x, rope)
    w_uk, w_uv = attn.up_weights()  # [branches, 1, w, H, dh]
    lat = state["latent"][0]  # [T, 4, w]
    k_nope = torch.einsum("tbw,bwhd->thd", lat, w_uk[:, 0])  # summed inside the key (MLA)
    v = torch.einsum("tbw,bwhd->thd", lat, w_uv[:, 0])
    one_softmax = torch.stack([
        _causal_softmax_attention(
            torch.cat([q[0][0, :, h], q[1][0, :, h]], -1),
            torch.cat([k_nope[:, h], state["k_rope"][0]], -1), v[:, h], cfg.softmax_scale)
        for h in range(cfg.n_heads)], 1)
    mla_form = attn.wo(one_softmax.reshape(1, T, -1))
    assert (mla_form - ours).abs().max() > 1e-3


def test_block_decomposition_identity():
    """docs/method.md: MLA's keys and values are sums over latent blocks."""
    cfg, attn, x = _setup("mla")
    rope = Rotary(torch.arange(T)[None])
    c = attn.kv_state(x, rope)["latent"][0, :, 0]  # [T, 512-equivalent]
    w_uk, w_uv = attn.up_weights()
    w_uk, w_uv = w_uk[0, 0], w_uv[0, 0]  # [d_c, H, dh]
    k_full = torch.einsum("tc,chd->thd", c, w_uk)
    v_full = torch.einsum("tc,chd->thd", c, w_uv)
    dh = cfg.head_dim
    blocks = cfg.kv_lora_rank // dh
    k_sum = sum(torch.einsum("tc,chd->thd", c[:, b * dh:(b + 1) * dh], w_uk[b * dh:(b + 1) * dh])
                for b in range(blocks))
    v_sum = sum(torch.einsum("tc,chd->thd", c[:, b * dh:(b + 1) * dh], w_uv[b * dh:(b + 1) * dh])
                for b in range(blocks))
    torch.testing.assert_close(k_full, k_sum)
    torch.testing.assert_close(v_full, v_sum)


@pytest.mark.parametrize("name", ["mla", "gla_2", "mlra_2", "mlra_4"])
def test_absorbed_form_equals_expanded_form(name):
    cfg, attn, x = _setup(name)
    rope = Rotary(torch.arange(T)[None])
    q, state = attn.query(x, rope), attn.kv_state(x, rope)
    torch.testing.assert_close(attn.attend_absorbed(q, state, None), attn.attend(q, state, None),
                               rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["mha", "mqa", "gqa"])
def test_grouped_query_attention_explicit(name):
    cfg, attn, x = _setup(name)
    H, Hkv, dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    x0 = x[0]
    q = (x0 @ attn.wq.weight.T).view(T, H, dh)
    k = (x0 @ attn.wk.weight.T).view(T, Hkv, dh)
    v = (x0 @ attn.wv.weight.T).view(T, Hkv, dh)
    heads = [_causal_softmax_attention(_rope(q[:, h]), _rope(k[:, h // (H // Hkv)]),
                                       v[:, h // (H // Hkv)], dh ** -0.5) for h in range(H)]
    ref = torch.cat(heads, -1) @ attn.wo.weight.T
    torch.testing.assert_close(attn(x, Rotary(torch.arange(T)[None])), ref[None])


def test_gta_explicit():
    cfg, attn, x = _setup("gta")
    H, Hkv, dh, r = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.rope_dim
    x0 = x[0]
    q = (x0 @ attn.wq.weight.T).view(T, H, dh)
    kv = (x0 @ attn.w_kv.weight.T).view(T, Hkv, dh)
    k_r = _rope(x0 @ attn.w_rope_k.weight.T)
    heads = []
    for h in range(H):
        g = h // (H // Hkv)
        q_h = torch.cat([q[:, h, :dh - r], _rope(q[:, h, dh - r:])], -1)
        k_h = torch.cat([kv[:, g, :dh - r], k_r], -1)  # tied part is the NoPE key...
        v_h = kv[:, g]  # ...and the first half of the value
        heads.append(_causal_softmax_attention(q_h, k_h, v_h, dh ** -0.5))
    ref = torch.cat(heads, -1) @ attn.wo.weight.T
    torch.testing.assert_close(attn(x, Rotary(torch.arange(T)[None])), ref[None])


def test_mfa_explicit():
    cfg, attn, x = _setup("mfa")
    H, dh = cfg.n_heads, cfg.head_dim
    x0 = x[0]
    q = (_rms(x0 @ attn.wq_a.weight.T, attn.q_norm.weight) @ attn.wq_b.weight.T).view(T, H, dh)
    k, v = _rope(x0 @ attn.wk.weight.T), x0 @ attn.wv.weight.T
    heads = [_causal_softmax_attention(_rope(q[:, h]), k, v, dh ** -0.5) for h in range(H)]
    ref = torch.cat(heads, -1) @ attn.wo.weight.T
    torch.testing.assert_close(attn(x, Rotary(torch.arange(T)[None])), ref[None])


def test_tpa_explicit():
    cfg, attn, x = _setup("tpa")
    H, dh, R, Rq = cfg.n_heads, cfg.head_dim, cfg.tpa_rank, cfg.tpa_q_rank
    x0 = x[0]

    def factor(wa, wb, rank, rotate):
        a = (x0 @ wa.weight.T).view(T, H, rank)
        b = (x0 @ wb.weight.T).view(T, rank, dh)
        if rotate:
            b = torch.stack([_rope(b[:, r]) for r in range(rank)], 1)
        return torch.einsum("thr,trd->thd", a, b) / rank

    q = factor(attn.w_aq, attn.w_bq, Rq, True)
    k = factor(attn.w_ak, attn.w_bk, R, True)
    v = factor(attn.w_av, attn.w_bv, R, False)
    heads = [_causal_softmax_attention(q[:, h], k[:, h], v[:, h], dh ** -0.5) for h in range(H)]
    ref = torch.cat(heads, -1) @ attn.wo.weight.T
    torch.testing.assert_close(attn(x, Rotary(torch.arange(T)[None])), ref[None])


def test_tpa_xavier_bounds_at_paper_size():
    """The official init bounds (docs/method.md, TPA's Xavier bounds): +-0.0180 (W_Aq), +-0.0311
    (W_Ak, W_Av), +-0.0039 (W_B*)."""
    from mlra import ModelConfig
    torch.manual_seed(0)
    attn = build_attention(ModelConfig.preset("tpa"))
    attn.reset_parameters()
    for w, bound in [(attn.w_aq, 0.0180), (attn.w_ak, 0.0311), (attn.w_av, 0.0311),
                     (attn.w_bq, 0.0039), (attn.w_bk, 0.0039)]:
        m = w.weight.abs().max().item()
        assert bound * 0.97 < m <= bound * 1.005, (m, bound)


def test_latent_scales():
    cfg, attn, _ = _setup("mlra_4")
    assert attn.q_scale == pytest.approx(math.sqrt(cfg.d_model / cfg.q_lora_rank))
    assert attn.kv_scale == pytest.approx(math.sqrt(cfg.d_model / cfg.latent_head_dim))
    assert attn.out_scale == pytest.approx(0.5)
    _, plain, _ = _setup("mlra_2", latent_scaling=False)
    assert (plain.q_scale, plain.kv_scale, plain.out_scale) == (1.0, 1.0, 1.0)


def test_rope_depends_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(64), torch.randn(64)

    def rot(v, p):
        pos = torch.tensor([[p]])
        rope = Rotary(pos)
        cos, sin = rope.tables(64)
        return apply_rotary(v[None, None], cos, sin)[0, 0]

    ref = rot(q, 3) @ rot(k, 10)
    for shift in (1, 100, 12345):
        torch.testing.assert_close(rot(q, 3 + shift) @ rot(k, 10 + shift), ref, rtol=1e-4,
                                   atol=1e-4)
    assert (rot(q, 3) @ rot(k, 11) - ref).abs() > 1e-3
