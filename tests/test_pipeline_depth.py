"""The latent decode kernel keeps at least two shared-memory buffers per cache tile, so the
load of the next tile overlaps the products of the current one.

The tile's address comes from the block table; Triton 3.6 then gives the tile one buffer
below five pipeline stages, and every tile waited a full memory latency (1.7x slower at 1M
tokens on the H200, ``benchmarks/decode/NOTES.md``). Checked on a CPU in the kernel's TTGIR,
compiled ahead of time for sm_90 with its default launch parameters.

The same for the projection kernel's weight tiles when K and the row strides are divisible by
8 but not 16 (K = 9880, the 2.9B models' MLP width): the runtime then marks them with no
divisibility, and unless the kernel establishes it, no tile load is asynchronous at all (the
down projection ran at 63% of copy bandwidth on the H200, gate/up at 86%)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import ptxas_for_sm90, run_without_interpreter

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed")


@pytest.mark.skipif(not ptxas_for_sm90(), reason="no ptxas for sm_90")
def test_cache_tiles_are_multi_buffered_with_the_default_parameters(tmp_path):
    out = tmp_path / "buffers.json"
    run_without_interpreter([str(Path(__file__).with_name("pipeline_ttgir.py")), str(out)])
    buffers = json.loads(out.read_text())
    for case, counts in buffers.items():
        assert counts, f"{case}: no cache-tile buffer found in the TTGIR"
        assert min(counts) >= 2, f"{case}: cache tiles single-buffered ({counts})"
