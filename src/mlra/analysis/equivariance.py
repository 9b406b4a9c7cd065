"""Translation equivariance: do attention logits and layer outputs change when every position
shifts by the same Δ? (docs/method.md, translation equivariance.)

Theory. RoPE rotates q at position m and k at position n so that (R_m q)^T (R_n k) =
q^T R_{n-m} k: a logit that is a sum of such terms and of position-free (NoPE) terms depends
on n - m only, so a common shift leaves attention -- and every layer -- unchanged. This holds
for full RoPE (MHA/MQA/GQA, MFA; TPA rotates its B factors, and the per-head A contraction is a
scalar combination that commutes with the rotation) and for decoupled partial RoPE (GTA,
MLA/GLA/MLRA: NoPE part + shared rotated key). It fails when a head-specific linear map acts
*after* the rotation: rotating a shared latent and up-projecting per head gives
c_m^T R_m^T W_q W_k^T R_n c_n, and R_m^T M R_n is not a function of n - m for a general M. That
is the counter-example measured here (and why RoPE cannot be put on the MLA latent without
losing absorption, hence the decoupled key).

Practical consequence: left-padding a batch shifts each prompt's real tokens by its pad count;
with pad keys masked, an equivariant model then generates exactly what the prompt generates
alone, with no per-row position correction (:func:`left_padding_demo`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import torch

from mlra.attention import Attention, family_of
from mlra.config import VARIANTS, ModelConfig
from mlra.layers import Rotary
from mlra.model import Transformer

DEFAULT_DELTAS = (1, 10, 1_000, 100_000, 10_000_000)

THEORY = {
    "mha": "full RoPE on q and k",
    "mqa": "full RoPE on q and k",
    "gqa": "full RoPE on q and k",
    "mfa": "full RoPE on q and k",
    "tpa": "RoPE on the B factors (commutes with the A contraction)",
    "gta": "partial RoPE: shared rotated key + NoPE tied state",
    "mla": "decoupled partial RoPE: NoPE latent + shared rotated key",
    "gla_2": "decoupled partial RoPE: NoPE latent + shared rotated key",
    "gla_4": "decoupled partial RoPE: NoPE latent + shared rotated key",
    "mlra_2": "decoupled partial RoPE: NoPE latent + shared rotated key",
    "mlra_4": "decoupled partial RoPE: NoPE latent + shared rotated key",
}


def tolerance(dtype: torch.dtype) -> float:
    """Largest relative change still read as 'unchanged' at ``dtype`` (rounding only)."""
    return 1e-9 if dtype == torch.float64 else 1e-4


def rel_change(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |a| (0 when both are zero)."""
    scale = a.abs().max().item()
    return (a - b).abs().max().item() / scale if scale > 0 else (a - b).abs().max().item()


# ----------------------------------------------------------------------------- logits
def attention_logits(attn: Attention, x: torch.Tensor, rope: Rotary) -> torch.Tensor:
    """Scaled pre-softmax logits of ``attn`` on ``x`` [batch, T, d]: [batch, streams, T, T]
    (streams = query heads, times branches for the latent family), no mask applied."""
    return attn.score_logits(x, rope)


def _causal(t: torch.Tensor) -> torch.Tensor:
    T = t.shape[-1]
    keep = torch.ones(T, T, dtype=torch.bool, device=t.device).tril()
    return t.masked_fill(~keep, 0.0)


# ----------------------------------------------------------------------------- variants
@dataclass
class ShiftRow:
    """How much one model's quantities change when all positions shift by ``delta``."""

    variant: str
    delta: int
    logits: float  # attention logits (causal entries), worst layer
    attention_output: float  # attention layer outputs, worst layer
    layer_output: float  # block outputs of the shifted run, worst layer
    model_logits: float  # next-token logits


@dataclass
class VariantResult:
    variant: str
    rope: str
    theory: str
    rows: list[ShiftRow] = field(default_factory=list)
    measured: str = ""


def _random_model(cfg: ModelConfig, seed: int, dtype: torch.dtype) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(replace(cfg, zero_init_output=False)).to(dtype).eval()
    with torch.no_grad():  # non-trivial norm scales too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@torch.no_grad()
def measure_variant(
    name: str,
    cfg: ModelConfig,
    deltas: tuple[int, ...] = DEFAULT_DELTAS,
    seq_len: int = 32,
    batch: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> VariantResult:
    """Random model of ``cfg`` (non-zero output projections): relative change of attention
    logits, attention outputs, layer outputs and model logits under each position shift."""
    model = _random_model(cfg, seed, dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=gen)
    base = torch.arange(seq_len).expand(batch, seq_len)

    def run(positions: torch.Tensor):
        rope = Rotary(positions, cfg.rope_base)
        x = model.embed_tokens(ids)
        inputs, outputs = [], []
        for block in model.layers:
            inputs.append(block.attn_norm(x))
            x = block(x, rope, None)
            outputs.append(x)
        return inputs, outputs, model.logits(model.norm(x))

    ref_in, ref_out, ref_logits = run(base)
    rope0 = Rotary(base, cfg.rope_base)
    ref_attn = [(_causal(attention_logits(b.attn, h, rope0)), b.attn(h, rope0))
                for b, h in zip(model.layers, ref_in, strict=True)]
    result = VariantResult(name, family_of(cfg).rope,
                           THEORY.get(name, "RoPE"))
    for delta in deltas:
        pos = base + delta
        rope = Rotary(pos, cfg.rope_base)
        lg, ao = 0.0, 0.0
        for block, h, (l0, o0) in zip(model.layers, ref_in, ref_attn, strict=True):
            lg = max(lg, rel_change(l0, _causal(attention_logits(block.attn, h, rope))))
            ao = max(ao, rel_change(o0, block.attn(h, rope)))
        _, outs, logits = run(pos)
        lo = max(rel_change(a, b) for a, b in zip(ref_out, outs, strict=True))
        result.rows.append(ShiftRow(name, delta, lg, ao, lo, rel_change(ref_logits, logits)))
    worst = max(max(r.logits, r.layer_output, r.model_logits) for r in result.rows)
    result.measured = "unchanged" if worst <= tolerance(dtype) else "changes"
    return result


# ----------------------------------------------------------------------------- counter-example
@torch.no_grad()
def rope_order_counterexample(
    rope_before_up: bool,
    deltas: tuple[int, ...] = DEFAULT_DELTAS,
    d_model: int = 128,
    n_heads: int = 4,
    head_dim: int = 32,
    latent_dim: int = 64,
    seq_len: int = 32,
    batch: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> VariantResult:
    """A low-rank attention whose shared latents are rotated *before* the per-head
    up-projections (``rope_before_up=True``: q_h = W_uq,h^T R_m c^q_m, k_h = W_uk,h^T R_n c_n)
    or, as the control, after them (q_h = R_m W_uq,h^T c^q_m, ...)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype) * std

    x = rnd(batch, seq_len, d_model, std=1.0)
    w_dq, w_dkv = rnd(d_model, latent_dim, std=d_model**-0.5), rnd(d_model, latent_dim,
                                                                      std=d_model**-0.5)
    w_uq, w_uk, w_uv = (rnd(n_heads, latent_dim, head_dim, std=latent_dim**-0.5)
                        for _ in range(3))
    scale = 1.0 / math.sqrt(head_dim)
    base = torch.arange(seq_len).expand(batch, seq_len)

    def run(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rope = Rotary(positions)
        c_q, c_kv = x @ w_dq, x @ w_dkv
        if rope_before_up:
            q = torch.einsum("btc,hcd->bhtd", rope.rotate(c_q), w_uq)
            k = torch.einsum("bsc,hcd->bhsd", rope.rotate(c_kv), w_uk)
        else:
            q = rope.rotate(torch.einsum("btc,hcd->bthd", c_q, w_uq)).transpose(1, 2)
            k = rope.rotate(torch.einsum("bsc,hcd->bshd", c_kv, w_uk)).transpose(1, 2)
        v = torch.einsum("bsc,hcd->bhsd", c_kv, w_uv)
        logits = torch.einsum("bhtd,bhsd->bhts", q, k) * scale
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
        p = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
        return _causal(logits), p @ v

    l0, o0 = run(base)
    name = "rope_before_up_projection" if rope_before_up else "rope_after_up_projection"
    theory = ("RoPE on the shared latent, then per-head up-projection: R_m^T W R_n is not a "
              "function of n - m" if rope_before_up else
              "control: same layer with RoPE after the per-head up-projection")
    result = VariantResult(name, "before up-projection" if rope_before_up else "full", theory)
    for delta in deltas:
        l1, o1 = run(base + delta)
        ch = rel_change(o0, o1)
        result.rows.append(ShiftRow(name, delta, rel_change(l0, l1), ch, ch, ch))
    worst = max(max(r.logits, r.attention_output) for r in result.rows)
    result.measured = "unchanged" if worst <= tolerance(dtype) else "changes"
    return result


# ----------------------------------------------------------------------------- left padding
@dataclass
class PaddingRow:
    variant: str
    prompt_lengths: list[int]
    new_tokens: int
    tokens_equal: bool
    max_logit_diff: float


@torch.no_grad()
def left_padding_demo(
    name: str,
    cfg: ModelConfig,
    prompt_lengths: tuple[int, ...] = (5, 13, 9),
    new_tokens: int = 6,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    pad_id: int = 0,
) -> PaddingRow:
    """Greedy generation of a left-padded batch whose positions are the raw column indices (so
    each prompt's real tokens are shifted by its pad count) with pad keys masked, against each
    prompt generated alone from position 0 through the paged cache (:func:`mlra.generate`)."""
    from mlra.generate import generate

    model = _random_model(cfg, seed, dtype)
    gen = torch.Generator().manual_seed(seed + 2)
    prompts = [torch.randint(1, cfg.vocab_size, (n,), generator=gen).tolist()
               for n in prompt_lengths]
    width = max(prompt_lengths)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    padded_tokens: list[list[int]] = [[] for _ in prompts]
    padded_logits: list[list[torch.Tensor]] = [[] for _ in prompts]
    for _ in range(new_tokens):
        T = ids.shape[1]
        positions = torch.arange(T).expand(len(prompts), T)  # no per-row correction
        logits = model(ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        nxt = logits.argmax(-1)
        for i in range(len(prompts)):
            padded_tokens[i].append(int(nxt[i]))
            padded_logits[i].append(logits[i])
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt[:, None])], dim=1)
    alone = [generate(model, [p], max_new_tokens=new_tokens)[0] for p in prompts]
    diff = 0.0
    for i, p in enumerate(prompts):  # logits of the same sequences, unpadded, from position 0
        seq = torch.tensor([p + padded_tokens[i][:-1]])
        ref = model(seq).logits[0, len(p) - 1:]
        diff = max(diff, (ref - torch.stack(padded_logits[i])).abs().max().item())
    return PaddingRow(name, list(prompt_lengths), new_tokens, alone == padded_tokens, diff)


# ----------------------------------------------------------------------------- driver
def run_equivariance(
    variants: tuple[str, ...] = VARIANTS,
    deltas: tuple[int, ...] = DEFAULT_DELTAS,
    size: str = "tiny",
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    seq_len: int = 32,
    padding_demo: bool = True,
) -> dict:
    """The whole analysis as a JSON-ready dict: per-variant shift measurements, the RoPE-order
    counter-example and its control, and the left-padding demonstration."""
    out: dict = {"settings": {"size": size, "dtype": str(dtype).replace("torch.", ""),
                              "deltas": list(deltas), "seed": seed, "seq_len": seq_len,
                              "tolerance": tolerance(dtype)},
                 "variants": [], "counterexample": [], "left_padding": []}
    for name in variants:
        cfg = ModelConfig.preset(name, size=size)
        res = measure_variant(name, cfg, deltas, seq_len=seq_len, seed=seed, dtype=dtype)
        out["variants"].append(asdict(res))
        if padding_demo:
            out["left_padding"].append(asdict(left_padding_demo(name, cfg, seed=seed,
                                                                dtype=dtype)))
    for before in (True, False):
        res = rope_order_counterexample(before, deltas, seq_len=seq_len, seed=seed, dtype=dtype)
        out["counterexample"].append(asdict(res))
    return out


def format_report(result: dict) -> str:
    """Markdown tables of :func:`run_equivariance`'s result."""
    s = result["settings"]
    lines = [
        f"Translation equivariance: relative change (max |a-b| / max |a|) when every position "
        f"shifts by Δ; random {s['size']} models, {s['dtype']}, sequence {s['seq_len']}; "
        f"'unchanged' = below {s['tolerance']:g}.", "",
    ]
    head = "| variant | RoPE | theory | measured | " + " | ".join(
        f"Δ={d:,}" for d in s["deltas"]) + " |"
    lines += ["Worst relative change of attention logits / layer outputs over all layers:", "",
              head, "|" + "---|" * (4 + len(s["deltas"]))]
    for res in result["variants"] + result["counterexample"]:
        theory = ("not equivariant" if res["rope"] == "before up-projection"
                  else "equivariant") + f" ({res['theory']})"
        cells = [f"{r['logits']:.1e} / {r['layer_output']:.1e}" for r in res["rows"]]
        lines.append(f"| {res['variant']} | {res['rope']} | {theory} | {res['measured']} | "
                     + " | ".join(cells) + " |")
    if result["left_padding"]:
        lines += ["", "Left-padded batched greedy generation (positions = raw column index, pad "
                  "keys masked) against each prompt alone:", "",
                  "| variant | prompt lengths | new tokens | tokens equal | max logit diff |",
                  "|---|---|---|---|---|"]
        for r in result["left_padding"]:
            lines.append(f"| {r['variant']} | {r['prompt_lengths']} | {r['new_tokens']} | "
                         f"{'yes' if r['tokens_equal'] else 'NO'} | {r['max_logit_diff']:.1e} |")
    return "\n".join(lines)
