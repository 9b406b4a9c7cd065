"""The fused latent training attention kernel alone: exactness on the GPU, launch-config sweep,
achieved TFLOP/s against the measured bf16 matmul rate, and one layer's attention (latent
up-projection + attention, forward + backward) on the fused path against the SDPA path.

    python benchmarks/train/bench_attn_kernel.py --out benchmarks/train/results/h200/kernel.json

The backward's two dQ modes side by side (``TrainKernelConfig.dq_mode``: "separate" dQ pass,
"atomic" dQ from the dK/dV pass), errors against fp32 and times, json to ``DIR/dq_modes.json``:

    python benchmarks/train/bench_attn_kernel.py --dq-modes --out DIR

FLOPs counted (per query-key pair on or below the diagonal, per head): forward
2 x (NB x D + R) for the scores (the RoPE part once for all branches) + 2 x NB x Dv for P @ V;
backward 2 x (NB x D + R) (scores again) + 2 x 2 x NB x Dv (dV, dP) + 2 x 2 x (NB x D + R)
(dQ, dK). The kernels' own recomputation (the dQ and dK/dV passes both rebuild P and dP, and
the dK/dV pass recomputes the RoPE scores per branch) is not counted: the rate is useful work.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch


def matmul_tflops() -> float:
    import triton.testing

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    return 2 * 8192**3 / (ms * 1e-3) / 1e12


def attn_flops(B: int, T: int, H: int, NB: int, D: int, R: int, Dv: int) -> tuple[float, float]:
    pairs = B * T * (T + 1) / 2 * H
    qk, pv = NB * D + R, NB * Dv
    return 2 * pairs * (qk + pv), 2 * pairs * (qk + 2 * pv + 2 * qk)


def make_inputs(B, T, H, NB, D, R, seed=0, hkv=None):
    g = torch.Generator(device="cuda").manual_seed(seed)
    hkv = hkv or H
    q = torch.randn(B, T, H, D + R, device="cuda", generator=g).bfloat16()
    kv = torch.randn(B, T, NB, hkv, 2 * D, device="cuda", generator=g).bfloat16()
    kr = torch.randn(B, T, R, device="cuda", generator=g).bfloat16()
    return q, kv, kr


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def check(B, T, H, NB, D, R, hkv=None) -> dict:
    """Fused kernel and the bf16 reference against an fp32 reference, forward and gradients."""
    from mlra.kernels.reference import latent_train_attention_ref
    from mlra.kernels.train_ops import latent_train_attention_fused

    q, kv, kr = make_inputs(B, T, H, NB, D, R, seed=T, hkv=hkv)
    scale, osc = (D + R) ** -0.5, NB**-0.5
    res = {}
    outs = {}
    for name, dt, fn in (("fused", torch.bfloat16, latent_train_attention_fused),
                         ("ref_bf16", torch.bfloat16, latent_train_attention_ref),
                         ("ref_fp32", torch.float32, latent_train_attention_ref)):
        qq, kk, rr = (t.detach().to(dt).requires_grad_() for t in (q, kv, kr))
        o = fn(qq[..., :D], qq[..., D:], kk, rr, scale, osc)
        g = torch.randn(o.shape, device="cuda", generator=torch.Generator(device="cuda")
                        .manual_seed(1)).to(dt)
        o.backward(g)
        outs[name] = (o, qq.grad, kk.grad, rr.grad)
    ref = outs["ref_fp32"]
    for name in ("fused", "ref_bf16"):
        res[name] = [rel(a, b) for a, b in zip(outs[name], ref, strict=True)]
    return res


def time_ms(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def kernel_times(B, T, H, NB, D, R, cfg) -> tuple[float, float]:
    from mlra.kernels import triton_latent_train as k

    q, kv, kr = make_inputs(B, T, H, NB, D, R)
    args = (q[..., :D], q[..., D:], kv, kr, (D + R) ** -0.5, NB**-0.5)
    o, ob, lse = k.forward(*args, config=cfg)
    do = torch.randn_like(o)
    fwd = time_ms(lambda: k.forward(*args, config=cfg))
    bwd = time_ms(lambda: k.backward(do, *args[:4], o, ob, lse, *args[4:], config=cfg))
    return fwd, bwd


def layer_times(variant: str, B: int, T: int) -> dict:
    """One layer's up-projection + attention (forward + backward), fused against SDPA."""
    from mlra import ModelConfig
    from mlra.attention.latent import LatentAttention
    from mlra.layers import Rotary

    cfg = ModelConfig.preset(variant, size="1b")
    attn = LatentAttention(cfg).cuda()
    attn.reset_parameters()
    x = torch.randn(B, T, cfg.d_model, device="cuda")
    rope = Rotary(torch.arange(T, device="cuda").expand(B, T), cfg.rope_base)
    out = {}
    for path in ("fused", "sdpa"):
        os.environ["MLRA_DISABLE_TRITON"] = "1" if path == "sdpa" else "0"
        with torch.autocast("cuda", dtype=torch.bfloat16):
            q = attn.query(x, rope)
            st = attn.kv_state(x, rope)
        q = tuple(t.detach().requires_grad_() for t in q)
        st = {k: t.detach().requires_grad_() for k, t in st.items()}

        def step(q=q, st=st) -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                o = attn.attend(q, st, None)
            o.float().sum().backward()

        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        out[path] = {"ms": time_ms(step),
                     "peak_extra_gb": (torch.cuda.max_memory_allocated() - base) / 2**30}
    os.environ["MLRA_DISABLE_TRITON"] = "0"
    return out


def bwd_flops_executed(NB: int, D: int, R: int, Dv: int, mode: str, chunk: int) -> float:
    """Backward FLOPs the kernels execute per query-key pair and head (diagonal-tile waste not
    counted), with ``chunk`` branches sharing the RoPE work of a tile (dQ pass chunk for
    "separate", dK/dV chunk for "atomic")."""
    per_branch = 3 * D + 2 * Dv  # scores, dV, dP, dK, dQ (NoPE)
    if mode == "atomic":  # RoPE scores, dk_rope, dq_rope once per chunk
        return 2 * (NB * per_branch + NB // chunk * 3 * R)
    # dK/dV pass per branch: scores (NoPE + RoPE), dV, dP, dK, dk_rope; dQ pass: scores, dP, dQ
    # per branch, RoPE scores and dq_rope per chunk
    return 2 * (NB * (2 * D + 2 * Dv + 2 * R) + NB * (2 * D + Dv) + NB // chunk * 2 * R)


def ref_grads_fp32(q, kv, kr, D, scale, osc, do) -> list[torch.Tensor]:
    """fp32 reference (output, dq, dkv, dk_rope), a few heads at a time (bounded memory for the
    T x T scores of long contexts; query heads = KV heads here)."""
    from mlra.kernels.reference import latent_train_attention_ref

    B, T, H, _ = q.shape
    NB = kv.shape[2]
    assert kv.shape[3] == H
    hc = max(1, min(H, 2**31 // (B * NB * T * T * 4)))
    while H % hc:
        hc -= 1
    outs, dqs, dkvs = [], [], []
    dkr = torch.zeros(kr.shape, device=kr.device, dtype=torch.float32)
    for h0 in range(0, H, hc):
        qq = q[:, :, h0:h0 + hc].float().requires_grad_()
        kk = kv[:, :, :, h0:h0 + hc].float().requires_grad_()
        rr = kr.float().requires_grad_()
        o = latent_train_attention_ref(qq[..., :D], qq[..., D:], kk, rr, scale, osc)
        o.backward(do[:, :, h0:h0 + hc].float())
        outs.append(o.detach())
        dqs.append(qq.grad)
        dkvs.append(kk.grad)
        dkr += rr.grad
        del o, qq, kk, rr
    return [torch.cat(outs, 2), torch.cat(dqs, 2), torch.cat(dkvs, 3), dkr]


#: backward variants of the --dq-modes comparison: name -> TrainKernelConfig overrides of the
#: default configuration (dK/dV tiles: the atomic pass's dQ product has BLOCK_M rows, so 64-row
#: query blocks are timed too; two branches per program need the smaller key block: four
#: fp32 dK/dV accumulators of 128 x 128 do not fit in the registers)
DQ_VARIANTS = {
    "separate": {},
    "atomic": {"dq_mode": "atomic", "dkv_branches_per_program": 1},
    "atomic_m64": {"dq_mode": "atomic", "dkv_branches_per_program": 1, "dkv_block_m": 64,
                   "dkv_stages": 2},
    "atomic_c2_n64": {"dq_mode": "atomic", "dkv_branches_per_program": 2, "dkv_block_m": 32,
                      "dkv_block_n": 64},
}
#: extra atomic-mode tiles timed with --dq-modes --sweep
DQ_SWEEP = {
    "atomic_n64": {"dq_mode": "atomic", "dkv_branches_per_program": 1, "dkv_block_m": 32,
                   "dkv_block_n": 64},
    "atomic_m64_n64": {"dq_mode": "atomic", "dkv_branches_per_program": 1, "dkv_block_m": 64,
                       "dkv_block_n": 64, "dkv_stages": 2},
    "atomic_c2": {"dq_mode": "atomic", "dkv_branches_per_program": 2},
    "atomic_c2_m64_n64": {"dq_mode": "atomic", "dkv_branches_per_program": 2,
                          "dkv_block_m": 64, "dkv_block_n": 64, "dkv_stages": 2},
}


def compare_dq_modes(out_dir: Path, sweep: bool) -> dict:
    """Backward of each dQ mode at the 1B widths: ms, TFLOP/s (useful FLOPs, as the rest of
    this script counts them), executed / useful FLOPs, relative errors against fp32."""
    from mlra.kernels import triton_latent_train as k

    t_start = time.perf_counter()
    H, D, R = 16, 128, 64
    mm = matmul_tflops()
    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "matmul_tflops": mm, "H": H, "D": D, "R": R, "rows": []}
    print(f"{result['device']}: bf16 matmul 8192^3 {mm:.0f} TFLOP/s", flush=True)
    variants = {**DQ_VARIANTS, **(DQ_SWEEP if sweep else {})}
    for NB in (1, 4):
        base = k.default_config(NB)
        for (B, T) in ((4, 2048), (1, 8192)):
            q, kv, kr = make_inputs(B, T, H, NB, D, R, seed=T)
            scale, osc = (D + R) ** -0.5, NB**-0.5
            args = (q[..., :D], q[..., D:], kv, kr)
            o, ob, lse = k.forward(*args, scale, osc, config=base)
            do = torch.randn(o.shape, device="cuda", generator=torch.Generator(device="cuda")
                             .manual_seed(1)).bfloat16()
            ref = ref_grads_fp32(q, kv, kr, D, scale, osc, do)
            err_o = rel(o, ref[0])
            _, fb = attn_flops(B, T, H, NB, D, R, D)
            pairs = B * T * (T + 1) / 2 * H
            for name, over in variants.items():
                if NB == 1 and over.get("dkv_branches_per_program", 1) > 1:
                    continue
                try:
                    cfg = dataclasses.replace(base, **over)
                    call = functools.partial(k.backward, do, *args, o, ob, lse, scale, osc,
                                             config=cfg)
                    grads = call()
                    torch.cuda.synchronize()
                    ms = time_ms(call)
                except Exception as e:  # noqa: BLE001 - an invalid config or one that fails
                    print(f"  NB={NB} {B}x{T} {name}: failed {type(e).__name__}: "
                          f"{str(e)[:100]}", flush=True)
                    continue
                got = [torch.cat(grads[:2], -1), grads[2], grads[3]]
                errs = [rel(a, b) for a, b in zip(got, ref[1:], strict=True)]
                if cfg.dq_mode == "atomic":
                    chunk = k._chunk(NB, cfg.dkv_branches_per_program)
                else:
                    chunk = k._chunk(NB, cfg.dq_branches_per_program)
                executed = pairs * bwd_flops_executed(NB, D, R, D, cfg.dq_mode, chunk)
                row = {"NB": NB, "B": B, "T": T, "variant": name, "config": over,
                       "bwd_ms": ms, "bwd_tflops": fb / ms / 1e9,
                       "executed_over_useful": executed / fb, "err_out": err_o,
                       "err_dq": errs[0], "err_dkv": errs[1], "err_dk_rope": errs[2]}
                result["rows"].append(row)
                print(f"  NB={NB} {B}x{T} {name}: bwd {ms:.3f} ms {row['bwd_tflops']:.0f} "
                      f"TFLOP/s; rel err dq {errs[0]:.2e} dkv {errs[1]:.2e} dk_rope "
                      f"{errs[2]:.2e}", flush=True)
            del ref, q, kv, kr, o, ob, lse, do
            torch.cuda.empty_cache()
    print(f"\nbackward by dQ mode, H={H} D={D} R={R}, matmul {mm:.0f} TFLOP/s; TFLOP/s of "
          "useful work; errors relative L2 against fp32 on the same bf16 inputs")
    print("| NB | context | variant | bwd ms | vs separate | TFLOP/s | % matmul | executed/useful"
          " | err dq | err dkv | err dk_rope |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    sep = {(r["NB"], r["B"], r["T"]): r["bwd_ms"] for r in result["rows"]
           if r["variant"] == "separate"}
    for r in result["rows"]:
        base_ms = sep.get((r["NB"], r["B"], r["T"]))
        ratio = f"{base_ms / r['bwd_ms']:.2f}x" if base_ms else "-"
        print(f"| {r['NB']} | {r['B']}x{r['T']} | {r['variant']} | {r['bwd_ms']:.3f} | {ratio} "
              f"| {r['bwd_tflops']:.0f} | {100 * r['bwd_tflops'] / mm:.0f}% | "
              f"{r['executed_over_useful']:.2f} | {r['err_dq']:.1e} | {r['err_dkv']:.1e} | "
              f"{r['err_dk_rope']:.1e} |")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dq_modes.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out_dir / 'dq_modes.json'} ({time.perf_counter() - t_start:.0f} s)")
    return result


FWD_CANDIDATES = {
    1: [dict(fwd_block_m=128, fwd_block_n=64, fwd_warps=8, fwd_stages=3),
        dict(fwd_block_m=128, fwd_block_n=64, fwd_warps=8, fwd_stages=4),
        dict(fwd_block_m=128, fwd_block_n=128, fwd_warps=8, fwd_stages=3)],
    4: [dict(fwd_block_m=128, fwd_block_n=64, fwd_warps=8, fwd_stages=3,
             branches_per_program=1),
        dict(fwd_block_m=128, fwd_block_n=64, fwd_warps=8, fwd_stages=2,
             branches_per_program=2),
        dict(fwd_block_m=128, fwd_block_n=64, fwd_warps=8, fwd_stages=3,
             branches_per_program=2),
        dict(fwd_block_m=128, fwd_block_n=32, fwd_warps=8, fwd_stages=3,
             branches_per_program=2)],
}
BWD_CANDIDATES = {
    1: [dict(),
        dict(dq_block_m=128, dq_block_n=64, dq_warps=8, dq_stages=2),
        dict(dkv_block_m=64, dkv_block_n=128, dkv_warps=8, dkv_stages=2)],
    4: [dict(dq_branches_per_program=1),
        dict(dq_branches_per_program=2),
        dict(dq_branches_per_program=1, dq_block_n=64, dq_stages=2),
        dict(dq_branches_per_program=2, dq_block_m=64, dq_block_n=64, dq_warps=4,
             dq_stages=2)],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None,
                   help="json file (default out/train/kernel.json); with --dq-modes a "
                        "directory (default out/train) for dq_modes.json")
    p.add_argument("--sweep", action="store_true", help="time the launch-config candidates")
    p.add_argument("--dq-modes", action="store_true",
                   help="only compare the backward's dQ modes (separate / atomic)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.dq_modes:
        compare_dq_modes(Path(args.out or "out/train"), args.sweep)
        return 0
    args.out = args.out or "out/train/kernel.json"
    from mlra.kernels import triton_latent_train as k

    H, D, R = 16, 128, 64
    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    mm = matmul_tflops()
    result["matmul_tflops"] = mm
    print(f"{result['device']}: bf16 matmul 8192^3 {mm:.0f} TFLOP/s", flush=True)

    checks = {}
    for (B, T, NB, hkv) in ((2, 1000, 4, None), (1, 777, 1, None), (1, 515, 2, None),
                            (1, 300, 2, 8)):
        c = check(B, T, 16, NB, D, R, hkv)
        checks[f"B{B} T{T} NB{NB} Hkv{hkv or 16}"] = c
        print(f"check B={B} T={T} NB={NB} Hkv={hkv or 16}: rel err vs fp32 "
              f"(o, dq, dkv, dk_rope) fused {[f'{e:.1e}' for e in c['fused']]} "
              f"bf16-ref {[f'{e:.1e}' for e in c['ref_bf16']]}", flush=True)
    result["checks"] = checks

    rows = []
    for NB in (1, 4):
        base = k.default_config(NB)
        cands_f = FWD_CANDIDATES[NB] if args.sweep else [{}]
        cands_b = BWD_CANDIDATES[NB] if args.sweep else [{}]
        for (B, T) in ((4, 2048), (1, 8192)):
            ff, fb = attn_flops(B, T, H, NB, D, R, D)
            best_f = best_b = None
            for c in cands_f:
                cfg = dataclasses.replace(base, **c)
                try:
                    f, _ = kernel_times(B, T, H, NB, D, R, cfg)
                except Exception as e:  # noqa: BLE001 - a config that does not compile
                    print(f"  NB={NB} fwd {c}: failed {type(e).__name__}: {str(e)[:100]}")
                    continue
                print(f"  NB={NB} {B}x{T} fwd {c}: {f:.3f} ms {ff / f / 1e9:.0f} TFLOP/s",
                      flush=True)
                if best_f is None or f < best_f[0]:
                    best_f = (f, c)
            for c in cands_b:
                cfg = dataclasses.replace(base, **c)
                try:
                    _, bw = kernel_times(B, T, H, NB, D, R, cfg)
                except Exception as e:  # noqa: BLE001
                    print(f"  NB={NB} bwd {c}: failed {type(e).__name__}: {str(e)[:100]}")
                    continue
                print(f"  NB={NB} {B}x{T} bwd {c}: {bw:.3f} ms {fb / bw / 1e9:.0f} TFLOP/s",
                      flush=True)
                if best_b is None or bw < best_b[0]:
                    best_b = (bw, c)
            rows.append({"NB": NB, "B": B, "T": T, "fwd_ms": best_f[0], "bwd_ms": best_b[0],
                         "fwd_cfg": best_f[1], "bwd_cfg": best_b[1],
                         "fwd_tflops": ff / best_f[0] / 1e9, "bwd_tflops": fb / best_b[0] / 1e9,
                         "fwd_bwd_tflops": (ff + fb) / (best_f[0] + best_b[0]) / 1e9})
    result["kernel"] = rows
    layers = {}
    for variant in ("mla", "mlra_4"):
        for (B, T) in ((4, 2048), (1, 8192)):
            layers[f"{variant} {B}x{T}"] = layer_times(variant, B, T)
    result["layer"] = layers

    print(f"\nfused kernel, H={H} D={D} R={R}, matmul {mm:.0f} TFLOP/s")
    print("| NB | context | fwd ms | bwd ms | fwd TFLOP/s | bwd TFLOP/s | fwd+bwd % of matmul |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['NB']} | {r['B']}x{r['T']} | {r['fwd_ms']:.3f} | {r['bwd_ms']:.3f} | "
              f"{r['fwd_tflops']:.0f} | {r['bwd_tflops']:.0f} | "
              f"{100 * r['fwd_bwd_tflops'] / mm:.0f}% |")
    print("\none layer's up-projection + attention, fwd+bwd (ms; extra peak GB)")
    print("| variant | context | fused | sdpa |")
    print("|---|---|---|---|")
    for key, v in layers.items():
        name, ctx = key.split()
        print(f"| {name} | {ctx} | {v['fused']['ms']:.2f} ({v['fused']['peak_extra_gb']:.2f}) | "
              f"{v['sdpa']['ms']:.2f} ({v['sdpa']['peak_extra_gb']:.2f}) |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
