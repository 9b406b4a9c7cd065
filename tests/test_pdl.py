"""Programmatic dependent launch (PDL) of the decode-step kernels.

The contract that makes PDL safe: a kernel may start while the previous one finishes, so
everything that reads or writes memory another kernel writes must come after its
``griddepcontrol.wait``; before it, only prefetches (hints) and reads of data staged before the
step (lengths, block table) are allowed. On a CPU the Hopper form of each kernel is compiled
ahead of time for sm_90 (Triton's bundled ptxas) and its PTX is checked for that order; on a
Hopper GPU a fused decode step captured in a CUDA graph with PDL equals, bit for bit, the same
step launched plainly.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import ptxas_for_sm90, run_without_interpreter

HAS_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

ON_HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


_MEMORY_OP = re.compile(r"^\s*(?:@%p\d+\s+)?(st\.global|atom\.|red\.|ld\.global|cp\.async)",
                        re.MULTILINE)


def _before_wait(ptx: str) -> list[str]:
    """The global memory instructions (not prefetches) before the first ``griddepcontrol.wait``."""
    head = ptx[: ptx.index("griddepcontrol.wait")]
    return [m.group(1) for m in _MEMORY_OP.finditer(head)]


def _bytes_loaded(ptx: str) -> int:
    """Bytes one thread reads with the ``ld.global`` instructions of ``ptx`` (vector width x
    element bits)."""
    return sum(int(m.group(1) or 1) * int(m.group(2)) // 8 for m in re.finditer(
        r"ld\.global(?:\.\w+)*?(?:\.v(\d))?\.[bfsu](\d+)\b", ptx))


needs_ptxas = pytest.mark.skipif(not ptxas_for_sm90(), reason="no ptxas for sm_90")


@pytest.fixture(scope="module")
def ptx(tmp_path_factory) -> dict[str, dict]:
    """PTX of each kernel form, compiled for sm_90 in a process without the interpreter."""
    out = tmp_path_factory.mktemp("ptx") / "ptx.json"
    run_without_interpreter([str(Path(__file__).with_name("pdl_ptx.py")), str(out)])
    return json.loads(out.read_text())


@needs_ptxas
def test_skinny_kernel_prefetches_its_weights_then_waits_before_any_memory_access(ptx):
    k = ptx["skinny_swiglu_pdl2"]
    assert k["launch_pdl"]
    ptx = k["ptx"]
    assert ptx.count("prefetch.global.L2") >= 2  # gate and up rows
    assert ptx.index("prefetch.global.L2") < ptx.index("griddepcontrol.wait")
    assert _before_wait(ptx) == []  # x, the residual, the workspace: all after the wait
    assert ptx.index("griddepcontrol.wait") < ptx.index("griddepcontrol.launch_dependents")
    # the split-K arrival counter and the partials come after the wait too
    assert ptx.index("atom.") > ptx.index("griddepcontrol.wait")


@needs_ptxas
def test_skinny_early_next_lets_the_next_launch_go_right_after_its_wait(ptx):
    """``early_next`` (the q/kv down projection's tuned entry): the next kernel may launch
    once this one's wait is over, before any of its weight tiles are read (its prefetch then
    overlaps this stream); by default only after the main loop's loads."""
    def first_load_after_wait(code: str) -> int:
        wait = code.index("griddepcontrol.wait")
        return wait + re.search(r"(ld\.global|cp\.async)", code[wait:]).start()

    early = ptx["skinny_early_pdl2"]["ptx"]
    assert early.count("griddepcontrol.launch_dependents") == 1
    trigger = early.index("griddepcontrol.launch_dependents")
    assert early.index("griddepcontrol.wait") < trigger < first_load_after_wait(early)
    assert _before_wait(early) == []
    plain = ptx["skinny_swiglu_pdl2"]["ptx"]
    assert plain.count("griddepcontrol.launch_dependents") == 1
    assert plain.index("griddepcontrol.launch_dependents") > first_load_after_wait(plain)


# bytes each of 128 threads reads before the wait: W_UV, 4 branches x 128 latent rows x 32
# columns, bf16
@needs_ptxas
def test_w_uv_preload_loads_only_its_slice_before_the_wait(ptx):
    nbytes = 4 * 128 * 32 * 2 // 128
    ptx = ptx["up_preload"]["ptx"]
    wait = ptx.index("griddepcontrol.wait")
    assert set(_before_wait(ptx)) == {"ld.global"}
    assert "prefetch.global.L2" not in ptx  # registers instead of the L2 prefetch
    assert _bytes_loaded(ptx[:wait]) == nbytes


@needs_ptxas
def test_w_uv_early_next_lets_the_output_projection_launch_before_its_wait(ptx):
    """The one-token W_UV form of the step (``EARLY_NEXT``): the trigger comes before the
    wait, and before the wait still only the slice's loads; without it, right after."""
    code = ptx["up_preload_early"]["ptx"]
    wait = code.index("griddepcontrol.wait")
    assert code.count("griddepcontrol.launch_dependents") == 1
    assert code.index("griddepcontrol.launch_dependents") < wait
    assert set(_before_wait(code)) == {"ld.global"}
    plain = ptx["up_preload"]["ptx"]
    assert plain.index("griddepcontrol.wait") < plain.index("griddepcontrol.launch_dependents")


@needs_ptxas
def test_mlp_kernel_prefetches_three_weights_waits_then_meets_at_its_barrier(ptx):
    k = ptx["mlp_pdl2"]
    assert k["launch_pdl"]
    ptx = k["ptx"]
    wait = ptx.index("griddepcontrol.wait")
    assert ptx[:wait].count("prefetch.global.L2") >= 3  # gate, up and down rows
    assert _before_wait(ptx) == []  # the input, norm, residual, workspace: after the wait
    # the next kernel may launch once the weight stream is done, before the barrier (every
    # program is then resident, so the barrier cannot wait on one that has not started)
    trigger = ptx.index("griddepcontrol.launch_dependents")
    assert wait < trigger < ptx.index("atom.")
    # the barrier: one atomic per program, relaxed polls, then an acquire fence (no reset)
    barrier = ptx[ptx.index("atom."):]
    assert barrier.count("atom.") == 1 and "ld.relaxed.gpu.global.b64" in barrier
    assert barrier.index("ld.relaxed.gpu") < barrier.index("fence.acq_rel.gpu")


@needs_ptxas
def test_mlp_kernel_can_let_the_next_launch_start_inside_its_main_loop(ptx):
    """``MlpConfig(next_left=4)``: a predicated trigger (no branch around it) inside the main
    loop, before the loop's back edge, besides the one after the loop; without it, only the
    latter."""
    code = ptx["mlp_pdl2_next4"]["ptx"]
    assert code.count("griddepcontrol.launch_dependents") == 2
    pred = "@p griddepcontrol.launch_dependents"
    early = code.index(pred)
    after = code.index("griddepcontrol.launch_dependents", early + len(pred))
    assert code.index("griddepcontrol.wait") < early < after < code.index("atom.")
    assert "bra" in code[early:after]  # the loop's back edge lies between them
    assert "@p griddepcontrol" not in ptx["mlp_pdl2"]["ptx"]


@needs_ptxas
def test_mlp_kernel_takes_its_tail_rank_inside_a_pipelined_main_loop(ptx):
    """``MlpConfig(tail_steps=...)``: the rank is one atomic inside the main loop (before the
    trigger that follows the loop, after the wait), with L2 prefetches of the rank's first
    tail units; the main loop and the tail's loop are both pipelined (twice the
    asynchronous copies of the plain kernel); the barrier's atomic comes after both."""
    plain, code = ptx["mlp_pdl2_aligned"]["ptx"], ptx["mlp_pdl2_aligned_tail"]["ptx"]
    assert code.count("cp.async.cg") == 2 * plain.count("cp.async.cg") > 0
    claim = code.index("atom.")
    trigger = code.index("griddepcontrol.launch_dependents")
    assert code.index("griddepcontrol.wait") < claim < trigger
    assert "bra" in code[claim:trigger]  # the loop's back edge lies between them
    assert code.count("atom.") == 2 and "atom." not in plain[:plain.index("atom.")]
    # the rank's first tail units go to L2 after the wait (in a block of the loop that LLVM
    # may place anywhere in the text); the plain kernel prefetches only before its wait
    after_wait = code[code.index("griddepcontrol.wait"):code.index("atom.global.gpu.acq_rel")]
    assert after_wait.count("prefetch.global.L2") >= 3
    assert "prefetch.global.L2" not in plain[plain.index("griddepcontrol.wait"):]


@needs_ptxas
def test_plain_launch_has_no_pdl_instructions(ptx):
    k = ptx["skinny_plain_pdl0"]
    assert not k["launch_pdl"]
    ptx = k["ptx"]
    assert "griddepcontrol" not in ptx and "prefetch.global.L2" not in ptx


@needs_ptxas
def test_pdl_without_prefetch_waits_first(ptx):
    ptx = ptx["skinny_pdl1"]["ptx"]
    assert "prefetch.global.L2" not in ptx
    assert _before_wait(ptx) == []


@needs_ptxas
@pytest.mark.parametrize("kernel", ["latent", "gqa"])
def test_attention_reads_only_staged_tables_before_the_wait(ptx, kernel):
    k = ptx[f"{kernel}_pdl2"]
    assert k["launch_pdl"]
    plain = ptx.get(f"{kernel}_pdl1")
    ptx = k["ptx"]
    assert ptx.index("prefetch.global.L2") < ptx.index("griddepcontrol.wait")
    early = _before_wait(ptx)
    # the sequence length and the block table (staged before the step) may be read for the
    # prefetch addresses; nothing is stored and no query or cache value is loaded
    assert "st.global" not in early and "atom." not in early and "red." not in early
    assert len(early) <= 8, early
    if plain is not None:
        assert _before_wait(plain["ptx"]) == []


@needs_ptxas
@pytest.mark.parametrize("kernel", ["prepare", "up", "prepare_rows", "up_rows", "merge",
                                    "gqa_prepare", "slots"])
def test_small_step_kernels_wait_before_touching_memory(ptx, kernel):
    k = ptx[kernel]
    assert k["launch_pdl"]
    ptx = k["ptx"]
    assert _before_wait(ptx) == []
    if kernel.removesuffix("_rows") in ("prepare", "up"):  # weight slices prefetched first
        assert ptx.index("prefetch.global.L2") < ptx.index("griddepcontrol.wait")


def test_pdl_mode_follows_the_device_and_the_environment(monkeypatch):
    from mlra.kernels import _triton_common as common

    cpu = torch.zeros(1)
    assert common.pdl_mode(cpu) == 0  # never on a CPU (or under the interpreter)
    assert common.launch_options(0) == {}
    assert common.launch_options(2) == {"launch_pdl": True}
    assert common.triton_has_pdl()  # Triton 3.6, the version the package pins
    if ON_HOPPER:
        gpu = torch.zeros(1, device="cuda")
        monkeypatch.delenv("MLRA_PDL", raising=False)
        monkeypatch.delenv("MLRA_PDL_PREFETCH", raising=False)
        assert common.pdl_mode(gpu) == 2
        monkeypatch.setenv("MLRA_PDL_PREFETCH", "0")
        assert common.pdl_mode(gpu) == 1
        monkeypatch.setenv("MLRA_PDL", "0")
        assert common.pdl_mode(gpu) == 0


def test_prefetch_budgets_stay_within_l2_and_one_split():
    from mlra.kernels._triton_common import PREFETCH_BYTES, prefetch_tokens
    from mlra.kernels.triton_skinny import prefetch_lines

    # a 121 MB gate/up projection, 1235 programs of 16 rows: about 8 MB in flight at most
    lines = prefetch_lines(3072, 16, 1235, 132, 2, 2)
    assert lines & (lines - 1) == 0
    assert 4 * 132 * 16 * 2 * lines * 128 <= PREFETCH_BYTES
    # never more than the program's own K range (a 3 MB projection split 8 ways)
    assert prefetch_lines(128, 8, 96, 132, 2, 1) == 2
    # attention: at most one split's tokens, within the budget, powers of two or nothing
    assert prefetch_tokens(128, 264, 384, 132) == 64
    assert prefetch_tokens(4096, 264, 384, 132) * 264 * 384 <= PREFETCH_BYTES
    assert prefetch_tokens(8, 264, 384, 132) == 0


def test_attention_prefetch_follows_the_mode_and_the_split():
    from mlra.kernels._triton_common import split_prefetch_tokens

    table = torch.zeros(1, 129, dtype=torch.int32)  # 129 pages of 64: 8256 tokens of capacity
    ref = torch.zeros(1)
    assert split_prefetch_tokens(1, None, table, 64, 64, 64, 256, 3, ref) == 0  # PDL, no prefetch
    # 64 splits of 3 tiles: at most one split's 192 tokens, as a power of two
    assert split_prefetch_tokens(2, None, table, 64, 64, 64, 256, 3, ref) == 128
    # a bound on the lengths shortens the splits: 1024 tokens over 64 splits = one tile each
    assert split_prefetch_tokens(2, 1024, table, 64, 64, 64, 256, 3, ref) == 64


@pytest.mark.skipif(not ON_HOPPER, reason="PDL needs a Hopper (or newer) GPU")
@pytest.mark.parametrize("name", ["mlra_4", "mla", "gqa"])
@pytest.mark.parametrize("batch", [3, 1])
def test_pdl_step_in_a_cuda_graph_equals_plain_launches(name, batch, monkeypatch):
    """The fused step with PDL and prefetch, captured in a CUDA graph and replayed, gives the
    logits of the same step launched plainly (bit for bit: PDL only reorders launches). Batch
    1 takes the one-row kernels (the resident projections on Hopper among them)."""
    from mlra.bench.paged import random_paged_cache
    from mlra.bench.timing import graphed
    from mlra.config import ModelConfig
    from mlra.decoding import DecodeStep
    from mlra.model import Transformer

    torch.manual_seed(0)
    cfg = ModelConfig.preset(name, "small", zero_init_output=False)
    model = Transformer(cfg).to("cuda", torch.bfloat16).eval()
    device = torch.device("cuda")
    cache, block_table, seq_lens = random_paged_cache(cfg, batch, 700, 16, torch.bfloat16,
                                                      device)
    ids = torch.randint(0, cfg.vocab_size, (batch, 1), device=device)
    with torch.no_grad():
        monkeypatch.setenv("MLRA_PDL", "0")
        plain_step = DecodeStep(model, cache, fused=True)
        assert plain_step.fused
        plain = plain_step(ids, block_table, seq_lens).clone()
        monkeypatch.delenv("MLRA_PDL")
        step = DecodeStep(model, cache, fused=True)
        out = {}

        def run():
            out["logits"] = step(ids, block_table, seq_lens)

        fn, error = graphed(run, device)
        assert error is None, error
        fn()
        torch.cuda.synchronize()
    assert torch.equal(out["logits"], plain)


_TIMER = "%globaltimer"


@needs_ptxas
@pytest.mark.parametrize("kernel", ["mlp_pdl2", "skinny_swiglu_pdl2", "latent_pdl2", "prepare",
                                    "up", "merge"])
def test_traced_kernels_mark_entry_wait_trigger_and_exit_untraced_have_no_timer(ptx, kernel):
    assert _TIMER not in ptx[kernel]["ptx"]  # the default build: marks compiled out
    k = ptx[f"{kernel}_traced"]
    assert k["launch_pdl"]
    code = k["ptx"]
    reads = [m.start() for m in re.finditer(re.escape(_TIMER), code)]
    assert len(reads) == 4, len(reads)  # one read per mark
    wait = code.index("griddepcontrol.wait")
    trigger = code.index("griddepcontrol.launch_dependents")
    assert reads[0] < wait < reads[1] < trigger < reads[2] < reads[3]
    # before the wait the only global access besides the kernel's own is the entry mark's store
    assert _before_wait(code) == ["st.global"] + _before_wait(ptx[kernel]["ptx"])
