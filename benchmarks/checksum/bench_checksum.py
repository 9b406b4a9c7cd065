"""Cost of the checkpoint checksums: SHA-256 throughput of this CPU over a weights-sized
buffer (read from the page cache, as a load right after a save would), and what that means for
the paper-size model's ``model.safetensors`` (fp32 and bf16).

    python benchmarks/checksum/bench_checksum.py [--mib 1024] [--model mlra_4]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

import mlra
from mlra.checkpoints.integrity import file_checksum


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=1024, help="size of the file hashed (MiB)")
    ap.add_argument("--model", default="mlra_4", help="variant whose paper size is costed")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "blob.bin"
        path.write_bytes(torch.randint(0, 256, (args.mib << 20,), dtype=torch.uint8).numpy())
        file_checksum(path)  # warm the page cache
        best = float("inf")
        for _ in range(args.reps):
            t0 = time.perf_counter()
            file_checksum(path)
            best = min(best, time.perf_counter() - t0)
    rate = (args.mib << 20) / best
    with torch.device("meta"):
        params = mlra.Transformer(mlra.ModelConfig.preset(args.model)).num_params()
    print(f"CPU: {platform.processor() or platform.machine()}; sha256 over {args.mib} MiB: "
          f"{best:.3f} s = {rate / 1e9:.2f} GB/s")
    for name, size in (("fp32", 4), ("bf16", 2)):
        nbytes = params * size
        print(f"paper-size {args.model} ({params / 1e9:.3f} B params), {name} weights "
              f"{nbytes / 1e9:.2f} GB: verifying costs {nbytes / rate:.1f} s")


if __name__ == "__main__":
    main()
