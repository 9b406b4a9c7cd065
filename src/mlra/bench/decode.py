"""``mlra bench decode``: per-device paged decode kernels at the paper's shapes (its decoding
latency benchmark) against the memory roofline and, for MLA, FlashMLA.

Each row times one attention call of one layer on one device (no projections, no
communication), as the paper's figure does: median of many calls timed with CUDA events, L2
flushed before each (by reading a large buffer; ``--flush write`` zeroes it instead and so
charges each call the write-back of a dirty L2, see :mod:`mlra.bench.timing`), random bf16
data in a randomly permuted paged cache. Achieved bandwidth
counts the cache bytes the call must read plus the queries read and outputs written; the
ceiling is a device-to-device copy measured in the same run (bytes read plus written).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mlra.bench.timing import FLUSH_MODES, copy_bandwidth, l2_flush_buffer, time_cuda
from mlra.errors import ConfigError, MlraError


@dataclass(frozen=True)
class DecodeShape:
    """One per-device decode kernel configuration."""

    name: str
    label: str
    kind: str  # "latent" or "gqa"
    hq: int
    page: int
    nb: int = 1  # latent streams
    w: int = 0  # latent width
    r: int = 64  # rope width
    hkv: int = 1
    d: int = 128
    dv: int = 128

    @property
    def bytes_per_token(self) -> int:
        """Cache bytes per token (bf16) this device must read."""
        if self.kind == "latent":
            return 2 * (self.nb * self.w + self.r)
        return 2 * self.hkv * (self.d + self.dv)

    @property
    def flops_per_token(self) -> int:
        """Matmul FLOPs per cached token (the RoPE logits are shared by the streams)."""
        if self.kind == "latent":
            return 2 * self.hq * (self.r + self.nb * self.w) + 2 * self.hq * self.nb * self.w
        return 2 * self.hq * (self.d + self.dv)


SHAPES: dict[str, DecodeShape] = {s.name: s for s in (
    DecodeShape("gqa_tp8", "GQA TP8: 8 q heads, 1 KV head of 128, page 128", "gqa", 8, 128),
    DecodeShape("mla", "MLA: 64 heads, 512+64, page 64", "latent", 64, 64, w=512),
    DecodeShape("gla2_tp2", "GLA-2 TP2: 32 heads, 256+64, page 64", "latent", 32, 64, w=256),
    DecodeShape("mlra4_tp4", "MLRA-4 TP4: 64 heads, 128+64, page 64", "latent", 64, 64, w=128),
    DecodeShape("mlra2_tp2", "MLRA-2 TP2: 32 heads (half), 2x128+64, page 64", "latent", 32, 64,
                nb=2, w=128),
    DecodeShape("mlra4_fused", "MLRA-4 fused, 1 GPU: 64 heads, 4x128+64, page 64", "latent",
                64, 64, nb=4, w=128),
)}
"""The per-device shapes of the decode-kernel benchmark (DeepSeek-sized heads)."""

PAPER_SHAPES: dict[str, DecodeShape] = {s.name: s for s in (
    DecodeShape("mlra4_2p9b", "MLRA-4 at 2.9B, 1 GPU: 24 heads, 4x128+64, page 64", "latent",
                24, 64, nb=4, w=128),
    DecodeShape("mla_2p9b", "MLA at 2.9B, 1 GPU: 24 heads, 512+64, page 64", "latent", 24, 64,
                w=512),
    DecodeShape("mlra2_2p9b", "MLRA-2 at 2.9B, 1 GPU: 24 heads, 2x256+64, page 64", "latent",
                24, 64, nb=2, w=256),
    DecodeShape("gla2_2p9b", "GLA-2 at 2.9B, 1 GPU, one group: 12 heads, 256+64, page 64",
                "latent", 12, 64, w=256),
)}
"""The attention of the paper-size models as ``mlra generate`` decodes them on one GPU (the
shapes of the end-to-end step), for the launch-parameter sweep (``benchmarks/decode/tune.py``)."""

PAPER_LENGTHS = "128K,256K,512K,768K,1M,1536K,2M"
BATCH_LENGTHS = "4K,8K,16K"
BATCHES = "32,64,128"


def parse_size(text: str) -> int:
    """``128K`` -> 131072, ``2M`` -> 2097152, ``1536`` -> 1536."""
    t = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if mult > 1 else t)
    except ValueError as exc:
        raise ConfigError(f"bad size {text!r}: use an integer with optional K/M suffix") from exc
    if value <= 0:
        raise ConfigError(f"size must be positive, got {text!r}")
    return int(value * mult)


def fmt_size(n: int) -> str:
    if n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n % (1 << 10) == 0:
        return f"{n >> 10}K"
    return str(n)


def build_inputs(shape: DecodeShape, batch: int, length: int, device: str = "cuda",
                 seed: int = 0) -> dict:
    """Random bf16 inputs (never zeros) in a randomly permuted page pool, all sequences full."""
    g = torch.Generator(device=device).manual_seed(seed)
    pps = -(-length // shape.page)
    pool = batch * pps
    table = torch.randperm(pool, device=device, generator=g).to(torch.int32).view(batch, pps)
    seq_lens = torch.full((batch,), length, dtype=torch.int32, device=device)
    bf16 = torch.bfloat16
    if shape.kind == "latent":
        row = shape.nb * shape.w + shape.r
        return dict(
            q_latent=torch.randn(batch, 1, shape.nb, shape.hq, shape.w, device=device,
                                 generator=g, dtype=bf16),
            q_rope=torch.randn(batch, 1, shape.hq, shape.r, device=device, generator=g,
                               dtype=bf16),
            cache=torch.randn(pool, shape.page, row, device=device, generator=g, dtype=bf16),
            block_table=table, seq_lens=seq_lens,
            latent_offsets=[j * shape.w for j in range(shape.nb)], rope_offset=shape.nb * shape.w,
            scale=(128 + shape.r) ** -0.5,
        )
    return dict(
        q=torch.randn(batch, 1, shape.hq, shape.d, device=device, generator=g, dtype=bf16),
        k_cache=torch.randn(pool, shape.page, shape.hkv, shape.d, device=device, generator=g,
                            dtype=bf16),
        v_cache=torch.randn(pool, shape.page, shape.hkv, shape.dv, device=device, generator=g,
                            dtype=bf16),
        block_table=table, seq_lens=seq_lens, scale=shape.d ** -0.5,
    )


def io_bytes(shape: DecodeShape, batch: int, length: int) -> int:
    """Bytes one call must move: the cache once, queries (bf16), outputs and LSE (fp32)."""
    cache = batch * length * shape.bytes_per_token
    if shape.kind == "latent":
        q = 2 * batch * shape.hq * (shape.nb * shape.w + shape.r)
        out = 4 * batch * shape.hq * shape.nb * (shape.w + 1)
    else:
        q = 2 * batch * shape.hq * shape.d
        out = 4 * batch * shape.hq * (shape.dv + 1)
    return cache + q + out


def triton_call(shape: DecodeShape, inputs: dict, length: int, num_splits: int | None = None,
                config=None) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """A closure calling our kernel on ``inputs``: for the latent family the one
    :func:`mlra.kernels.paged_latent_decode` picks (Gluon on Hopper, else Triton; a Triton
    ``config`` forces Triton)."""
    if shape.kind == "latent":
        from mlra.kernels import gluon_latent_wanted
        from mlra.kernels.triton_latent import paged_latent_decode_triton
        b, tq, nb, hq, w = inputs["q_latent"].shape
        out = torch.empty(b, tq, nb, hq, w, dtype=torch.float32, device=inputs["cache"].device)
        lse = torch.empty(b, tq, nb, hq, dtype=torch.float32, device=out.device)
        if config is None and gluon_latent_wanted(inputs["q_latent"], inputs["q_rope"],
                                                  inputs["cache"]):
            from mlra.kernels.gluon_latent import paged_latent_decode_gluon
            return lambda: paged_latent_decode_gluon(**inputs, out=out, lse=lse,
                                                     max_seq_len=length, num_splits=num_splits)
        return lambda: paged_latent_decode_triton(**inputs, out=out, lse=lse,
                                                  max_seq_len=length, num_splits=num_splits,
                                                  config=config)
    from mlra.kernels.triton_gqa import paged_gqa_decode_triton
    b, tq, hq, _ = inputs["q"].shape
    out = torch.empty(b, tq, hq, shape.dv, dtype=torch.float32, device=inputs["q"].device)
    lse = torch.empty(b, tq, hq, dtype=torch.float32, device=out.device)
    return lambda: paged_gqa_decode_triton(**inputs, out=out, lse=lse, max_seq_len=length,
                                           num_splits=num_splits, config=config)


def implementation(shape: DecodeShape, inputs: dict) -> str:
    """Which of our kernels :func:`triton_call` runs for ``inputs``: ``gluon`` or ``triton``."""
    from mlra.kernels import gluon_latent_wanted

    if shape.kind == "latent" and gluon_latent_wanted(inputs["q_latent"], inputs["q_rope"],
                                                      inputs["cache"]):
        return "gluon"
    return "triton"


def reference_error(shape: DecodeShape, inputs: dict, result) -> float:
    """Relative L2 error of ``result[0]`` against the torch reference (fp32)."""
    from mlra.kernels.reference import paged_gqa_decode_ref, paged_latent_decode_ref
    from mlra.kernels.testing import rel_error
    ref = (paged_latent_decode_ref if shape.kind == "latent" else paged_gqa_decode_ref)(**inputs)
    return rel_error(result[0], ref[0])


def matmul_tflops(device: str = "cuda", n: int = 8192, reps: int = 10) -> float:
    """Measured dense bf16 matmul rate (random operands), TFLOP/s."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    t = time_cuda(lambda: a @ b, reps=reps, warmup=3)
    return 2 * n**3 / (t.median_us * 1e-6) / 1e12


def _row(shape, kernel, batch, length, timing, copy_bw, tflops, extra) -> dict:
    nbytes = io_bytes(shape, batch, length)
    flops = batch * length * shape.flops_per_token
    sec = timing.median_us * 1e-6
    return dict(
        shape=shape.name, kernel=kernel, batch=batch, seq_len=length,
        median_us=round(timing.median_us, 2), p10_us=round(timing.p10_us, 2),
        p90_us=round(timing.p90_us, 2), reps=timing.reps,
        bytes=nbytes, flops=flops, gbps=round(nbytes / sec / 1e9, 1),
        frac_copy=round(nbytes / sec / copy_bw, 4), tflops=round(flops / sec / 1e12, 1),
        mem_floor_us=round(nbytes / copy_bw * 1e6, 2),
        compute_floor_us=round(flops / (tflops * 1e12) * 1e6, 2), **extra,
    )


def run_decode_bench(
    shapes: Sequence[DecodeShape], lengths: Sequence[int], batches: Sequence[int],
    batch_lengths: Sequence[int], reps: int = 100, use_flashmla: bool = True,
    check: bool = True, log: Callable[[str], None] = print, flush_mode: str = "read",
) -> dict:
    """Run the sweep; returns the JSON-able result (environment, ceilings, rows).
    ``flush_mode``: how the L2 is flushed before each timed call (:func:`time_cuda`)."""
    if not torch.cuda.is_available():
        raise MlraError("`mlra bench decode` needs a CUDA GPU (none is visible)")
    from mlra.kernels import triton_available
    if not triton_available():
        raise MlraError("`mlra bench decode` needs triton (pip install 'mlra[gpu]')")
    import triton

    from mlra.bench.flashmla import flashmla_mla_call, load_flashmla

    dev = "cuda"
    props = torch.cuda.get_device_properties(0)
    copy_bw = copy_bandwidth(dev)
    tflops = matmul_tflops(dev)
    log(f"device {props.name}, {props.multi_processor_count} SMs; copy {copy_bw / 1e9:.0f} GB/s "
        f"(read+write); bf16 matmul {tflops:.0f} TFLOP/s")
    fm, fm_reason = load_flashmla() if use_flashmla else (None, "disabled (--no-flashmla)")
    log("FlashMLA: " + ("sgl_kernel.flash_mla loaded" if fm else f"not timed: {fm_reason}"))
    flush = l2_flush_buffer(dev)
    rows: list[dict] = []
    points = [(1, n) for n in lengths] + [(b, n) for b in batches for n in batch_lengths]
    for shape in shapes:
        for batch, length in points:
            try:
                inputs = build_inputs(shape, batch, length, dev, seed=batch * 7 + length)
            except torch.OutOfMemoryError:
                log(f"{shape.name} b{batch} {fmt_size(length)}: out of memory, skipped")
                continue
            fn = triton_call(shape, inputs, length)
            result = fn()
            extra: dict = {"impl": implementation(shape, inputs)}
            if check and batch == 1 and length == min(lengths):
                extra["ref_rel_err"] = reference_error(shape, inputs, result)
            timing = time_cuda(fn, reps=reps, flush=flush, flush_mode=flush_mode)
            rows.append(_row(shape, "triton", batch, length, timing, copy_bw, tflops, extra))
            log(_fmt(rows[-1]))
            if fm is not None and shape.name == "mla":
                try:
                    fm_fn = flashmla_mla_call(fm, inputs["q_latent"], inputs["q_rope"],
                                              inputs["cache"], inputs["block_table"],
                                              inputs["seq_lens"], inputs["scale"])
                    fm_out = fm_fn()
                    from mlra.kernels.testing import rel_error
                    err = rel_error(fm_out[0].float(), result[0][:, :, 0])
                    t = time_cuda(fm_fn, reps=reps, flush=flush, flush_mode=flush_mode)
                    rows.append(_row(shape, "flashmla", batch, length, t, copy_bw, tflops,
                                     {"rel_err_vs_triton": err}))
                    log(_fmt(rows[-1]))
                except Exception as exc:  # record, keep the sweep going
                    fm_reason = f"FlashMLA call failed: {exc!r}"
                    log(fm_reason)
                    fm = None
            del inputs, fn, result
            torch.cuda.empty_cache()
    return dict(
        device=props.name, sms=props.multi_processor_count,
        torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
        copy_gbps=round(copy_bw / 1e9, 1), matmul_tflops=round(tflops, 1),
        flashmla=None if fm_reason is None else fm_reason, reps=reps, flush=flush_mode,
        shapes={s.name: {**asdict(s), "bytes_per_token": s.bytes_per_token,
                         "flops_per_token": s.flops_per_token} for s in shapes},
        rows=rows, time=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )


def _fmt(r: dict) -> str:
    kernel = r.get("impl") or r["kernel"]
    return (f"{r['shape']:12s} {kernel:8s} b{r['batch']:<4d} {fmt_size(r['seq_len']):>6s} "
            f"{r['median_us']:9.1f} us  {r['gbps']:7.0f} GB/s  {100 * r['frac_copy']:5.1f}% copy"
            f"  floor {r['mem_floor_us']:.1f} us")


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    return f"{r['median_us']:.1f} ({100 * r['frac_copy']:.0f}%)"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def markdown_report(res: dict, command: str) -> str:
    """Tables (us, % of measured copy bandwidth) and the issue's targets checked."""
    rows = res["rows"]
    by = {(r["shape"], r["kernel"], r["batch"], r["seq_len"]): r for r in rows}
    cols = [(s, "triton") for s in res["shapes"]]
    if any(r["kernel"] == "flashmla" for r in rows):
        cols.insert(list(res["shapes"]).index("mla") + 1, ("mla", "flashmla"))
    head = [f"{s} ({k})" if k != "triton" else s for s, k in cols]
    out = [
        "# Paged decode kernels: latency", "",
        f"Device: **{res['device']}** ({res['sms']} SMs); torch {res['torch']}, triton "
        f"{res['triton']}; measured copy bandwidth {res['copy_gbps']} GB/s (read+write), bf16 "
        f"matmul {res['matmul_tflops']} TFLOP/s; {res['time']}.", "",
        f"Command: `{command}`", "",
        "Cells: median us over " f"{res['reps']} L2-flushed calls (L2 flushed by "
        f"{'reading' if res.get('flush', 'write') == 'read' else 'writing'} 256 MB before "
        "each; achieved bandwidth as % of the measured copy bandwidth). One attention call of "
        "one layer on one device.", "",
    ]
    if res.get("flashmla"):
        out += [f"FlashMLA: {res['flashmla']}", ""]
    points = sorted({(r["batch"], r["seq_len"]) for r in rows})
    out += ["| batch | tokens | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(cols)]
    for b, n in points:
        cells = [_cell(by.get((s, k, b, n))) for s, k in cols]
        out.append(f"| {b} | {fmt_size(n)} | " + " | ".join(cells) + " |")

    def us(s, k, b, n):
        r = by.get((s, k, b, n))
        return r["median_us"] if r else None

    out += ["", "## Targets (issue 12: the H200)", ""]
    for b, n in [(1, 512 << 10), (1, 1 << 20), (1, 2 << 20), (128, 16 << 10)]:
        out.append(f"- our MLA / FlashMLA, batch {b} x {fmt_size(n)}: "
                   f"{_ratio(us('mla', 'triton', b, n), us('mla', 'flashmla', b, n))} "
                   "(target <= 1.10x)")
    for n in (1 << 20, 2 << 20):
        out.append(f"- FlashMLA MLA / our MLRA-4 TP4 at {fmt_size(n)}: "
                   f"{_ratio(us('mla', 'flashmla', 1, n), us('mlra4_tp4', 'triton', 1, n))} "
                   "(target >= 2.9x)")
    out.append(f"- MLRA-4 TP4, batch 1 x 128K: {us('mlra4_tp4', 'triton', 1, 128 << 10)} us "
               "(target <= 30)")
    big = [r for r in rows if r["kernel"] == "triton" and (
        (r["batch"] == 1 and r["seq_len"] >= 1 << 20)
        or (r["batch"] == 128 and r["seq_len"] == 16 << 10))]
    for r in sorted(big, key=lambda r: (r["shape"], r["batch"], r["seq_len"])):
        goal = 95 if r["shape"].startswith("gqa") else 85
        out.append(f"- {r['shape']} ({r.get('impl', r['kernel'])}) b{r['batch']} x "
                   f"{fmt_size(r['seq_len'])}: {100 * r['frac_copy']:.1f}% of copy bandwidth "
                   f"(target >= {goal}%)")
    return "\n".join(out) + "\n"


def plot(res: dict, path: Path) -> bool:
    """Latency vs length per kernel (batch 1, and the largest batch), with memory floors."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = res["rows"]
    batches = sorted({r["batch"] for r in rows})
    panels = [1] + ([batches[-1]] if batches[-1] != 1 else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
    for ax, batch in zip(axes[0], panels, strict=True):
        keys = sorted({(r["shape"], r["kernel"]) for r in rows if r["batch"] == batch})
        for i, (s, k) in enumerate(keys):
            sel = sorted((r for r in rows if r["batch"] == batch and r["shape"] == s
                          and r["kernel"] == k), key=lambda r: r["seq_len"])
            x = [r["seq_len"] / 1024 for r in sel]
            color = f"C{i}"
            ax.plot(x, [r["median_us"] for r in sel], "o-", color=color,
                    label=f"{s} ({k})" if k != "triton" else s)
            if k == "triton":
                ax.plot(x, [r["mem_floor_us"] for r in sel], "--", color=color, alpha=0.5)
        ax.set_xlabel("cached tokens per sequence (K)")
        ax.set_ylabel("latency per call (us)")
        ax.set_title(f"batch {batch} (dashed: bytes / measured copy bandwidth)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Paged decode, one layer on one device: {res['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "decode", help="time the paged decode kernels at the paper's per-device shapes",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  mlra bench decode\n  mlra bench decode --variants mla,mlra_4 "
               "--lengths 1024,8192 --reps 20\n")
    p.add_argument("--variants", default=",".join(SHAPES),
                   help=f"comma-separated shapes (default all: {', '.join(SHAPES)})")
    p.add_argument("--lengths", default=PAPER_LENGTHS,
                   help=f"batch-1 cached lengths (default {PAPER_LENGTHS})")
    p.add_argument("--batches", default=BATCHES, help=f"batched sweep sizes (default {BATCHES})")
    p.add_argument("--batch-lengths", default=BATCH_LENGTHS,
                   help=f"batched sweep lengths (default {BATCH_LENGTHS}); '' to skip")
    p.add_argument("--reps", type=int, default=100, help="timed calls per point (default 100)")
    p.add_argument("--out", default="out/decode",
                   help="directory for decode.json / decode.md / decode.png")
    p.add_argument("--no-flashmla", action="store_true", help="do not time FlashMLA")
    p.add_argument("--no-check", action="store_true", help="skip the reference check")
    p.add_argument("--flush", choices=FLUSH_MODES, default="read",
                   help="flush the L2 before each call by reading 256 MB (default: nothing "
                        "dirty left to write back) or by zeroing it (the write-back of a dirty "
                        "L2 is then charged to each call, 3-8 us on an H200)")
    p.set_defaults(func=run)


def _sizes(text: str) -> list[int]:
    return [parse_size(t) for t in text.split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; choose from {list(SHAPES)}")
    if args.reps < 3:
        raise ConfigError("--reps must be at least 3")
    lengths = _sizes(args.lengths)
    if not lengths:
        raise ConfigError("--lengths needs at least one length")
    batch_lengths = _sizes(args.batch_lengths)
    batches = [int(b) for b in args.batches.split(",") if b.strip()] if batch_lengths else []
    res = run_decode_bench([SHAPES[n] for n in names], lengths, batches, batch_lengths,
                           reps=args.reps, use_flashmla=not args.no_flashmla,
                           check=not args.no_check, flush_mode=args.flush)
    res["command"] = "mlra " + shlex.join(sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown_report(res, res["command"])
    (out / "decode.md").write_text(md)
    plotted = plot(res, out / "decode.png")
    print(md)
    print(f"wrote {out / 'decode.json'}, {out / 'decode.md'}"
          + (f", {out / 'decode.png'}" if plotted else " (no matplotlib: no plot)"))
    return 0


__all__ = ["SHAPES", "DecodeShape", "build_inputs", "io_bytes", "markdown_report",
           "parse_size", "plot", "run_decode_bench", "triton_call"]
