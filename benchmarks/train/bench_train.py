"""Training throughput (tokens/s, MFU) of the ~1B presets of MLA, GQA and MLRA-4 on one GPU
with bf16 autocast and torch.compile, and where the time goes in the attention of MLRA-4
(four branches) versus MLA.

One command (about 3 minutes on one H100, no extra installs)::

    python benchmarks/train/bench_train.py --out benchmarks/train/results_h100.json

Method: random tokens (B x T), fp32 master weights with bf16 autocast, fused AdamW, each
transformer block compiled separately (regional compilation: identical blocks share one
compiled graph) and the loss compiled too, as ``mlra train --compile`` does
(:func:`mlra.loss.compiled_token_cross_entropy`: no fp32 copy of the logits), gradient clipping
at 1.0 as the trainer clips (:func:`mlra.train.optim.clip_gradients`: the factor handed to the
fused AdamW kernel). Warm-up steps (which include compilation) are excluded; the timed steps are
measured with CUDA events and the median step is reported. MFU = model FLOPs / step time /
peak bf16 FLOP/s, with model FLOPs = 6 x parameters x tokens + causal attention
(3 x 2 x T/2 x heads x (qk width + v width) per token per layer per branch), the PaLM
definition with the causal half counted.

Attention paths (``--paths``, default ``fused,sdpa``): each latent variant (MLA, GLA, MLRA) is
run on the fused Triton training attention (the default on a GPU) and on the SDPA path
(``MLRA_DISABLE_TRITON=1``); other variants once. "vs MLA" divides tokens/s by MLA's on its
fastest path.

Attention profile (``--profile``, on by default): one layer's ``attn_norm + attention``
forward+backward alone (compiled, CUDA events) against the whole step, and a torch.profiler
split of that compiled layer's GPU kernels, classed by name (``kernel_classes.py``), into the
attention kernel (SDPA or the fused kernel), matmuls (projections, the latent up-projection per
branch) and the rest (norms, RoPE, copies, branch sum); on a CPU the eager operators. The
attention kernel's achieved TFLOP/s (its useful FLOPs, see :func:`kernel_flops`, over its
profiled GPU time) is printed against the measured bf16 matmul rate.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from kernel_classes import kernel_class

from mlra import ModelConfig, Transformer
from mlra.layers import Rotary
from mlra.loss import compiled_token_cross_entropy, token_cross_entropy
from mlra.train.optim import clip_gradients

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12,
             "B200": 2250e12}


def peak_flops(name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    return None


def attention_flops_per_token(cfg: ModelConfig, seq: int) -> float:
    """Training FLOPs of the attention scores and weighted sum per token (all layers)."""
    if cfg.family == "latent":
        qk, v, copies = cfg.head_dim + cfg.rope_dim, cfg.head_dim, cfg.latent_branches
    elif cfg.family == "mfa":
        qk, v, copies = cfg.head_dim, cfg.head_dim, 1
    else:
        qk, v, copies = cfg.head_dim, cfg.head_dim, 1
    fwd = 2 * (seq / 2) * cfg.n_heads * (qk + v) * copies
    return 3 * fwd * cfg.n_layers


def kernel_flops(cfg: ModelConfig, batch: int, seq: int) -> float:
    """Useful FLOPs of one layer's causal latent attention, forward + backward: per query-key
    pair on or below the diagonal and per head, scores 2 x (NB x D + R) (the RoPE part once for
    all branches), P @ V 2 x NB x Dv; backward: scores again, dV and dP (2 x 2 x NB x Dv), dQ
    and dK (2 x 2 x (NB x D + R))."""
    nb, d, r = cfg.latent_branches, cfg.head_dim, cfg.rope_dim
    pairs = batch * seq * (seq + 1) / 2 * cfg.n_heads
    qk, pv = nb * d + r, nb * d
    return 2 * pairs * (qk + pv) + 2 * pairs * (3 * qk + 2 * pv)


def matmul_tflops(device: str) -> float | None:
    """Measured dense bf16 matmul rate (8192^3, median of CUDA-event timings)."""
    if device != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    times, _ = timed(lambda: a @ b, 20, 5)
    return 2 * 8192**3 / (statistics.median(times) / 1e3) / 1e12


def compile_blocks(model: Transformer) -> None:
    for block in model.layers:
        block.compile()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, steps: int, warmup: int) -> tuple[list[float], float]:
    """Run ``fn`` warmup + steps times; return per-step ms of the timed steps (CUDA events on a
    GPU, wall clock on CPU) and the warm-up seconds."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync()
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        if torch.cuda.is_available():
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t))
    return times, warm_s


def build_training(name: str, size: str, batch: int, seq: int, device: str, compile: bool
                   ) -> tuple[ModelConfig, Transformer, Callable[[], None]]:
    """The preset ``name`` and one training step on random tokens, set up as ``mlra train``
    does (bf16 autocast, fused AdamW on CUDA, clipping at 1.0; with ``compile`` each block
    and the loss compiled)."""
    cfg = ModelConfig.preset(name, size=size)
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(cfg)
    if compile:
        compile_blocks(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device == "cuda")
    x = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=device)
    inp, tgt = x[:, :-1], x[:, 1:]
    loss_fn = compiled_token_cross_entropy() if compile else token_cross_entropy

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = model(inp).logits
        loss_fn(logits, tgt).backward()
        clip_gradients(opt, model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return cfg, model, step


def bench_variant(name: str, args: argparse.Namespace, peak: float | None, path: str) -> dict:
    os.environ["MLRA_DISABLE_TRITON"] = "1" if path == "sdpa" else "0"
    cfg, model, step = build_training(name, args.size, args.batch, args.seq, args.device,
                                      args.compile)
    n_params = sum(p.numel() for p in model.parameters())
    B, T = args.batch, args.seq

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, warm_s = timed(step, args.steps, args.warmup)
    ms = statistics.median(times)
    tokens = B * T
    flops = 6 * n_params * tokens + attention_flops_per_token(cfg, T) * tokens
    row = {
        "variant": name, "path": path, "params": n_params, "batch": B, "seq": T,
        "step_ms_median": ms, "step_ms_min": min(times), "tokens_per_s": tokens / (ms / 1e3),
        "model_tflops_per_step": flops / 1e12,
        "mfu": (flops / (ms / 1e3) / peak) if peak else None,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda"
        else None,
        "warmup_s_incl_compile": warm_s,
    }
    if args.profile and cfg.family == "latent":
        row["attention"] = profile_attention(model, cfg, args, ms)
    torch._dynamo.reset()
    return row


def profile_attention(model: Transformer, cfg: ModelConfig, args: argparse.Namespace,
                      step_ms: float) -> dict:
    """One layer's attention (norm + attention) fwd+bwd alone, and an eager kernel split."""
    block = model.layers[0]
    B, T = args.batch, args.seq
    dev = args.device
    pos = torch.arange(T, device=dev).expand(B, T)
    x = torch.randn(B, T, cfg.d_model, device=dev, requires_grad=True)
    attn, norm = block.attn, block.attn_norm

    def layer(a=attn, n=norm) -> None:
        with torch.autocast(dev, dtype=torch.bfloat16):
            out = a(n(x), Rotary(pos, cfg.rope_base), None)
        out.float().sum().backward()

    compiled = torch.compile(layer) if args.compile else layer
    times, _ = timed(compiled, args.steps, 3)
    layer_ms = statistics.median(times)

    # Kernel split with the profiler: on a GPU the kernels of the layer as timed (compiled),
    # classed by name; on a CPU the eager operators.
    profiled = compiled if dev == "cuda" else layer
    for _ in range(2):
        profiled()
    sync()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if dev == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            profiled()
        sync()
    split = {"attention_kernel": 0.0, "matmul": 0.0, "other": 0.0}
    top = []
    if dev == "cuda":
        kernels: dict[str, float] = {}
        for ev in prof.events():
            if ev.device_type == torch.autograd.DeviceType.CUDA:
                kernels[ev.name] = kernels.get(ev.name, 0.0) + ev.device_time
        for name, t in kernels.items():
            cls = kernel_class(name)
            split["attention_kernel" if cls == "attention" else
                  "matmul" if cls == "matmul" else "other"] += t
            top.append((t, name[:80]))
    else:
        _eager_op_split(prof, split, top)
    total = sum(split.values()) or 1.0
    top.sort(reverse=True)
    kernel_ms = split["attention_kernel"] / 1e3 / 3  # profiler times are us, 3 iterations
    return {
        "kernel_ms": kernel_ms,
        "kernel_tflops": kernel_flops(cfg, B, T) / (kernel_ms / 1e3) / 1e12 if kernel_ms else None,
        "layer_fwd_bwd_ms": layer_ms,
        "all_layers_ms": layer_ms * cfg.n_layers,
        "share_of_step": layer_ms * cfg.n_layers / step_ms,
        "split": {k: v / total for k, v in split.items()},
        "top": [{"name": k, "share": d / total} for d, k in top[:8]],
        "branches": cfg.latent_branches, "groups": cfg.latent_groups,
    }


def _eager_op_split(prof, split: dict[str, float], top: list) -> None:
    """CPU: operators' self time into the split (kernels are counted in their operator)."""
    for ev in prof.key_averages():
        t = ev.self_cpu_time_total
        if t <= 0:
            continue
        key = ev.key.lower()
        if key.startswith("mlra::") or (key.startswith("aten::") and any(
                k in key for k in ("attention", "flash", "fmha", "sdpa"))):
            split["attention_kernel"] += t
        elif key.startswith("aten::") and any(k in key for k in ("mm", "matmul", "linear",
                                                                  "einsum", "bmm")):
            split["matmul"] += t
        elif key.startswith("aten::"):
            split["other"] += t
        else:
            continue
        top.append((t, ev.key))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="mla,gqa,mlra_4")
    p.add_argument("--paths", default="fused,sdpa",
                   help="attention paths of the latent variants: fused (Triton), sdpa")
    p.add_argument("--size", default="1b")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak dense bf16 TFLOP/s of the GPU (default: from its name)")
    p.add_argument("--out", default="out/train/results.json")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only to smoke-test")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU (--device cpu only smoke-tests it)",
              file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    peak = peak_flops(name, args.peak_tflops)
    mm = matmul_tflops(args.device)
    t0 = time.time()
    rows = []
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        latent = ModelConfig.preset(variant, size=args.size).family == "latent"
        for path in paths if latent else ["sdpa"]:
            print(f"... {variant} ({path})", file=sys.stderr, flush=True)
            rows.append(bench_variant(variant, args, peak, path))
            r = rows[-1]
            print(f"    {r['step_ms_median']:.1f} ms/step, {r['tokens_per_s']:,.0f} tokens/s, "
                  f"peak {r['peak_mem_gb'] or 0:.1f} GB"
                  + (f", attention layer {r['attention']['layer_fwd_bwd_ms']:.2f} ms, kernel "
                     f"{r['attention']['kernel_ms']:.2f} ms" if "attention" in r else ""),
                  file=sys.stderr, flush=True)
            gc.collect()
            if args.device == "cuda":
                torch.cuda.empty_cache()
    os.environ.pop("MLRA_DISABLE_TRITON", None)
    mla = max((r["tokens_per_s"] for r in rows if r["variant"] == "mla"), default=None)
    print(f"\n{name}, torch {torch.__version__}, {args.size} presets, batch {args.batch} x "
          f"{args.seq}, bf16 autocast, compile={args.compile}"
          + (f", bf16 matmul {mm:.0f} TFLOP/s measured" if mm else ""))
    print("| variant | attention | params | step ms | tokens/s | MFU | peak mem GB | vs MLA |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        mem = f"{r['peak_mem_gb']:.1f}" if r["peak_mem_gb"] is not None else "n/a"
        vs = f"{r['tokens_per_s'] / mla:.2f}" if mla else "n/a"
        print(f"| {r['variant']} | {r['path']} | {r['params'] / 1e9:.3f}B | "
              f"{r['step_ms_median']:.1f} | {r['tokens_per_s']:,.0f} | {mfu} | {mem} | {vs} |")
    prof = [r for r in rows if "attention" in r]
    if prof:
        print("\nattention (norm + attention) of one layer, fwd+bwd, vs the whole step; its "
              "kernels by class (GPU: the layer as timed; CPU: eager operators); attention kernel "
              "TFLOP/s "
              "(useful FLOPs)"
              + (f" and its share of the {mm:.0f} TFLOP/s matmul rate:" if mm else ":"))
        print("| variant | attention | layer ms | x layers ms | share of step | attn kernel | "
              "matmul | other | kernel ms | kernel TFLOP/s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in prof:
            a = r["attention"]
            s = a["split"]
            rate = a["kernel_tflops"]
            rate_s = "n/a" if rate is None else (
                f"{rate:.0f}" + (f" ({100 * rate / mm:.0f}%)" if mm else ""))
            print(f"| {r['variant']} | {r['path']} | {a['layer_fwd_bwd_ms']:.2f} | "
                  f"{a['all_layers_ms']:.1f} | {100 * a['share_of_step']:.0f}% | "
                  f"{100 * s['attention_kernel']:.0f}% | {100 * s['matmul']:.0f}% | "
                  f"{100 * s['other']:.0f}% | {a['kernel_ms']:.2f} | {rate_s} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": name, "torch": torch.__version__, "args": vars(args),
        "peak_flops": peak, "matmul_tflops": mm, "seconds": time.time() - t0, "rows": rows,
    }, indent=1) + "\n")
    print(f"\nwrote {out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
