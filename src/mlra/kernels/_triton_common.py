"""Shared pieces of the Triton decode kernels: availability, the interpreter workaround, launch
configuration, the split-KV heuristic and workspaces, tile loads and the log-sum-exp merge of
split partial results.

Import only after checking :func:`triton_available` -- this module imports triton.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os

import numpy as np
import torch
import triton
import triton.language as tl

from mlra.kernels.kernel_trace import trace_slot

LOG2E = 1.4426950408889634

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _patch_interpreter_bf16_dot() -> None:
    """Triton 3.6.0's interpreter stores bf16 as uint16 and feeds those integers straight to
    ``np.matmul``, so a bf16 x bf16 ``tl.dot`` returns garbage. Upcast bf16 operands to fp32
    (exact) before the matmul. Only the interpreter is patched; compiled kernels are unaffected.
    """
    from triton.runtime import interpreter as interp

    builder = interp.InterpreterBuilder
    if getattr(builder, "_mlra_bf16_dot_patch", False):
        return
    original = builder.create_dot

    def _as_f32(h):
        if h.dtype.scalar == tl.bfloat16:
            bits = np.ascontiguousarray(h.data).astype(np.uint32) << 16
            return interp.TensorHandle(bits.view(np.float32), tl.float32)
        return h

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, _as_f32(a), _as_f32(b), d, input_precision, max_num_imprecise_acc)

    builder.create_dot = create_dot
    builder._mlra_bf16_dot_patch = True


def _patch_interpreter_index() -> None:
    """Scalar loads yield shape-(1,) arrays in the interpreter, and ``range(tensor, ...)`` calls
    ``int(array)``, which NumPy >= 2.4 rejects for arrays with a dimension. Take the single
    element instead."""
    from triton.runtime import interpreter as interp

    if getattr(interp, "_mlra_index_patch", False):
        return
    original = interp._patch_lang_tensor

    def _index(self):
        return int(np.asarray(self.handle.data).reshape(-1)[0])

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", _index)

    interp._patch_lang_tensor = patch_lang_tensor
    interp._mlra_index_patch = True


if INTERPRET:
    _patch_interpreter_bf16_dot()
    _patch_interpreter_index()


PDL_ENV = "MLRA_PDL"
"""Set to ``0`` to launch the decode-step kernels without programmatic dependent launch."""

PREFETCH_ENV = "MLRA_PDL_PREFETCH"
"""Set to ``0`` to keep the PDL launches but skip the L2 prefetch before the wait."""


@functools.lru_cache(maxsize=16)
def _hopper(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9


@functools.lru_cache(maxsize=1)
def triton_has_pdl() -> bool:
    """Whether the installed Triton launches with PDL (the ``launch_pdl`` option and the
    ``griddepcontrol`` intrinsics; Triton 3.6 has both, older releases may not)."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
        from triton.language.extra import cuda as tl_cuda
    except Exception:  # no CUDA backend in this Triton
        return False
    fields = getattr(CUDAOptions, "__dataclass_fields__", {})
    return "launch_pdl" in fields and all(
        hasattr(tl_cuda, name) for name in ("gdc_wait", "gdc_launch_dependents"))


def pdl_mode(t: torch.Tensor) -> int:
    """How the decode-step kernels on ``t``'s device launch: 0 = plainly; 1 = with programmatic
    dependent launch (Hopper or newer, compiled kernels, a Triton that has it): a kernel may
    start while its predecessor in the stream finishes and waits (``griddepcontrol.wait``)
    before it touches anything another kernel writes; 2 = as 1, and it first prefetches into
    L2 bytes that no kernel writes (weights, older cache rows), so its first loads hit L2.
    Environment:
    ``MLRA_PDL=0`` gives 0, ``MLRA_PDL_PREFETCH=0`` caps it at 1 (read at every launch; a CUDA
    graph keeps the mode it was captured with)."""
    if INTERPRET or not t.is_cuda:
        return 0
    if os.environ.get(PDL_ENV, "1") in ("", "0"):
        return 0
    if not _hopper(t.device.index if t.device.index is not None else 0) or not triton_has_pdl():
        return 0
    return 1 if os.environ.get(PREFETCH_ENV, "1") in ("", "0") else 2


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    """Wait until the previous kernel in the stream has finished and its writes are visible
    (a no-op unless launched with PDL). Everything that reads or writes memory other kernels
    write must come after this call."""
    if PDL > 0:
        tl.extra.cuda.gdc_wait()


@triton.jit
def pdl_launch_next(PDL: tl.constexpr):
    """Let the next kernel in the stream launch (it then runs up to its own :func:`pdl_wait`).
    Called after this kernel's wait, once its main loop is done, so at most one kernel waits
    beside a running one and its prefetches land just before they are used."""
    if PDL > 0:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def trace_mark(trace_ptr, MARK: tl.constexpr):
    """Write the GPU's nanosecond timer as mark ``MARK`` of this program
    (:data:`mlra.kernels.kernel_trace.MARKS`) at ``trace_ptr`` (``[programs, 4]`` int64, the
    programs numbered axis 0 fastest); compiled out when ``trace_ptr`` is None."""
    if trace_ptr is not None:
        pid = tl.program_id(0) + tl.num_programs(0) * (
            tl.program_id(1) + tl.num_programs(1) * tl.program_id(2))
        now = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64,
                                        is_pure=False, pack=1)
        tl.store(trace_ptr + pid.to(tl.int64) * 4 + MARK, now)


@triton.jit
def prefetch_l2(ptrs, PDL: tl.constexpr):
    """Prefetch the 128-byte lines at ``ptrs`` (a tensor of valid addresses) into L2, only in
    PDL mode 2. A hint: L2 is where global memory is coherent, so no later read can see stale
    data because of it."""
    if PDL > 1:
        tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // dummy $0", "=r,l", [ptrs],
                                  dtype=tl.int32, is_pure=False, pack=1)


PREFETCH_BYTES = 8 << 20
"""L2 prefetch budget of one launch under PDL: about what the first two microseconds of a
stream read at full bandwidth (the programs that start early are the first wave)."""


def prefetch_units(limit: int, programs: int, unit_bytes: int, sms: int,
                   resident_per_sm: int, cap: int, minimum: int = 1) -> int:
    """How many units (cached tokens, weight lines) of ``unit_bytes`` each program of a launch
    prefetches before its PDL wait: a power of two, at most ``limit`` (what the program will
    read) and ``cap``, with the programs resident at once (``resident_per_sm`` per
    multiprocessor) together within :data:`PREFETCH_BYTES`; 0 below ``minimum``."""
    resident = max(1, min(programs, resident_per_sm * sms))
    units = min(limit, PREFETCH_BYTES // (resident * unit_bytes), cap)
    return 0 if units < max(1, minimum) else 1 << (int(units).bit_length() - 1)


def prefetch_tokens(per_split: int, programs: int, bytes_per_token: int, sms: int) -> int:
    """Cached tokens per program an attention kernel prefetches (:func:`prefetch_units`: at
    most one split's, about two programs per multiprocessor, >= 16 or none)."""
    return prefetch_units(per_split, programs, bytes_per_token, sms, 2, 1024, minimum=16)


@triton.jit
def prefetch_tokens_l2(cache_ptr, bt_row_ptr, start, end, n_pages, s_cp, s_cr, col0,
                     PF_TOKENS: tl.constexpr, COL_LINES: tl.constexpr, PAGE: tl.constexpr,
                     LINE: tl.constexpr, PDL: tl.constexpr):
    """Prefetch into L2 ``COL_LINES`` lines from column ``col0`` of the first ``PF_TOKENS``
    cached tokens of ``[start, end)`` (page numbers clamped to the pool: a hint never
    faults)."""
    offs = start + tl.arange(0, PF_TOKENS)
    ok = offs < end
    page = tl.load(bt_row_ptr + offs // PAGE, mask=ok, other=0)
    page = tl.minimum(tl.maximum(page, 0), n_pages - 1).to(tl.int64)
    rows = cache_ptr + page * s_cp + (offs % PAGE) * s_cr + col0
    cols = tl.arange(0, COL_LINES) * LINE
    prefetch_l2(tl.where(ok[:, None], rows[:, None] + cols[None, :], cache_ptr), PDL)


def read_bound(max_seq_len: int | None, block_table: torch.Tensor, page: int) -> int:
    """Cached tokens a decode call reads at most per sequence: ``max_seq_len`` where given,
    else the block table's capacity (an upper bound that needs no device synchronisation)."""
    return max_seq_len if max_seq_len is not None else block_table.shape[1] * page


def split_prefetch_tokens(mode: int, max_seq_len: int | None, block_table: torch.Tensor,
                          page: int, block_n: int, num_splits: int, programs: int,
                          line_count: int, ref: torch.Tensor) -> int:
    """:func:`prefetch_tokens` of an attention launch in PDL ``mode`` (0 below mode 2):
    splits of the bound ``max_seq_len`` (default: the block table's capacity), ``line_count``
    128-byte lines per token."""
    if mode < 2:
        return 0
    capacity = read_bound(max_seq_len, block_table, page)
    per_split = math.ceil(math.ceil(capacity / block_n) / num_splits) * block_n
    return prefetch_tokens(per_split, programs, line_count * 128, device_sms(ref))


def launch_options(mode: int) -> dict:
    """Extra keyword arguments of a Triton launch for PDL ``mode`` (see :func:`pdl_mode`)."""
    return {"launch_pdl": True} if mode else {}


_STREAM_COUNTERS: dict[tuple, torch.Tensor] = {}


def stream_counters(device: torch.device, name: str, n: int, stream: int | None = None
                    ) -> torch.Tensor:
    """``n`` int32 zeros for the arrival counters or barriers of kernel ``name`` (which every
    launch leaves at zero again, or, as the MLP's barrier count, only ever adds to: see
    :func:`mlra.kernels.triton_mlp.barrier_counter`): one buffer per device and stream
    (``stream``: a stream handle, default the device's current one), so steps running on two
    streams at once never share counters. Made on first use (in a CUDA graph capture, from
    the graph's pool) and never replaced, since a captured graph keeps its address: a kernel
    asks for one size."""
    if stream is None:
        stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream, name)
    buf = _STREAM_COUNTERS.get(key)
    if buf is None:
        buf = _STREAM_COUNTERS[key] = torch.zeros(n, dtype=torch.int32, device=device)
    elif buf.numel() != n:
        raise ValueError(f"counters {name!r} hold {buf.numel()} entries, asked for {n}")
    return buf


def config_from_env(name: str, cls):
    """``cls`` (a launch-parameter dataclass) from the JSON object in environment variable
    ``name`` (e.g. ``{"block_n": 32}``), None when unset; a malformed value is refused with a
    message naming the variable. For tuning runs of whole decode steps."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return cls(**json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name}={raw!r} is not a JSON object of {cls.__name__} fields "
                         f"({exc})") from exc


def env_choice(name: str, choices: dict):
    """The value in ``choices`` for environment variable ``name`` (stripped; unset reads as
    ``""``); a value not among them is refused with a message naming the variable. For the
    kernels' A/B switches and trace diagnostics."""
    raw = os.environ.get(name, "").strip()
    if raw not in choices:
        named = ", ".join(repr(k) for k in choices if k)
        raise ValueError(f"{name}={raw!r}: expected one of {named}, or unset")
    return choices[raw]


def env_switch(name: str) -> bool:
    """A switch read from environment variable ``name``: unset or ``1`` on, ``0`` off;
    anything else is refused by name (:func:`env_choice`)."""
    return env_choice(name, {"": True, "1": True, "0": False})


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@functools.lru_cache(maxsize=16)
def sm_count(device_index: int) -> int:
    """Multiprocessors of a CUDA device (a small fixed number under the interpreter)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def device_sms(t: torch.Tensor) -> int:
    if t.is_cuda:
        return sm_count(t.device.index if t.device.index is not None else 0)
    return 4


@functools.lru_cache(maxsize=16)
def _block_shared_memory(device_index: int) -> int:
    props = torch.cuda.get_device_properties(device_index)
    return getattr(props, "shared_memory_per_block_optin", 0)


#: a Hopper multiprocessor's threads, registers and bytes of shared memory
HOPPER_SM_LIMITS = (2048, 65536, 233472)


@functools.lru_cache(maxsize=8)
def sm_limits(device_index: int) -> tuple[int, int, int]:
    """Threads, registers and bytes of shared memory of one multiprocessor of a CUDA device
    (Hopper's where the driver does not say)."""
    props = torch.cuda.get_device_properties(device_index)
    threads, regs, smem = HOPPER_SM_LIMITS
    return (getattr(props, "max_threads_per_multi_processor", 0) or threads,
            getattr(props, "regs_per_multiprocessor", 0) or regs,
            getattr(props, "shared_memory_per_multiprocessor", 0) or smem)


def block_shared_memory(t: torch.Tensor) -> int:
    """Bytes of shared memory one thread block may use on ``t``'s device (Hopper's, 227 KB,
    off CUDA: the interpreter has no limit)."""
    if t.is_cuda:
        return _block_shared_memory(t.device.index if t.device.index is not None else 0)
    return 227 * 1024


def choose_num_splits(
    programs: int, max_len: int, block_n: int, sms: int, ctas_per_sm: int = 1,
    overhead_tiles: float = 3.0, max_splits: int = 256,
) -> int:
    """Split-KV factor minimising a wave model of the run time.

    ``programs`` thread blocks exist before splitting; each split of a sequence of ``max_len``
    tokens costs its tiles plus a fixed prologue/epilogue (``overhead_tiles``); blocks run in
    waves of ``sms * ctas_per_sm``. Splitting also costs the merge pass, modelled as one tile
    per split per program. Ties go to fewer splits.
    """
    tiles = max(1, math.ceil(max_len / block_n))
    slots = max(1, sms * ctas_per_sm)
    best, best_cost = 1, float("inf")
    for s in range(1, min(max_splits, tiles) + 1):
        waves = math.ceil(programs * s / slots)
        cost = waves * (math.ceil(tiles / s) + overhead_tiles)
        if s > 1:
            cost += 0.02 * s * programs / slots + 1.0
        if cost < best_cost * 0.995:
            best, best_cost = s, cost
    return best


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Launch parameters of a decode kernel (``None`` fields are chosen by heuristics)."""

    block_n: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    block_m: int | None = None
    #: load cache tiles with TMA (Hopper); None = when the tile shape allows it
    use_tma: bool | None = None
    #: split-KV factor when the call gives none (None: the wave model's choice)
    num_splits: int | None = None


def resolve_config(config, default):
    """``default`` (a kernel-config dataclass) with the fields ``config`` sets (not None)."""
    if config is None:
        return default
    given = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return dataclasses.replace(default, **{k: v for k, v in given.items() if v is not None})


def num_splits_for(
    num_splits: int | None, max_seq_len: int | None, block_table: torch.Tensor, page: int,
    programs: int, block_n: int, ref: torch.Tensor, ctas_per_sm: int,
    configured: int | None = None,
) -> int:
    """``num_splits`` (the call's), else ``configured`` (the launch configuration's), else the
    wave model's choice for ``programs`` thread blocks over ``max_seq_len`` tokens (default:
    the block table's capacity, an upper bound that needs no device synchronisation)."""
    if num_splits is None:
        num_splits = configured
    if num_splits is None:
        max_seq_len = read_bound(max_seq_len, block_table, page)
        num_splits = choose_num_splits(programs, max_seq_len, block_n, device_sms(ref),
                                       ctas_per_sm=ctas_per_sm)
    return max(1, int(num_splits))


def decode_outputs(out: torch.Tensor | None, lse: torch.Tensor | None,
                   shape: tuple[int, ...], device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``out [*shape]`` / ``lse [*shape[:-1]]`` of a split-KV decode call, allocated (fp32)
    where not given."""
    if out is None:
        out = torch.empty(shape, dtype=torch.float32, device=device)
    if lse is None:
        lse = torch.empty(shape[:-1], dtype=torch.float32, device=device)
    return out, lse


def finished_empty(out: torch.Tensor, lse: torch.Tensor) -> bool:
    """Refuses outputs that are not contiguous; True, with the result written (zeros, LSE
    -inf), for a call without rows (no sequence, query or head)."""
    if not (out.is_contiguous() and lse.is_contiguous()):
        raise ValueError("out and lse must be contiguous")
    if lse.numel() == 0:
        out.zero_(), lse.fill_(float("-inf"))
        return True
    return False


def rows_as(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` in ``like``'s dtype with contiguous last dimension (a kernel's query operand)."""
    x = x.to(like.dtype)
    return x if x.stride(-1) == 1 else x.contiguous()


def split_workspaces(
    num_splits: int, out: torch.Tensor, lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the splits write: ``out`` / ``lse`` themselves for one split, else fp32 buffers
    ``[num_splits, *out.shape]`` / ``[num_splits, *lse.shape]`` for :func:`finish_splits`."""
    if num_splits == 1:
        return out.unsqueeze(0), lse.unsqueeze(0)
    return (torch.empty(num_splits, *out.shape, dtype=torch.float32, device=out.device),
            torch.empty(num_splits, *lse.shape, dtype=torch.float32, device=out.device))


def finish_splits(o_ws: torch.Tensor, lse_ws: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor) -> None:
    """Merge the split partials into ``out`` / ``lse`` (nothing to do for one split)."""
    n = o_ws.shape[0]
    if n > 1:
        d = out.shape[-1]
        merge_splits(o_ws.view(n, -1, d), lse_ws.view(n, -1), out.view(-1, d), lse.view(-1))


def tma_possible(cache: torch.Tensor, block_n: int, widths: tuple[int, ...]) -> bool:
    """Whether cache tiles can be loaded by TMA: Hopper or newer (or the interpreter), each tile
    inside one page, power-of-two tile widths, and a pool that is one 2-D row-major array."""
    hopper = cache.is_cuda and torch.cuda.get_device_capability(cache.device)[0] >= 9
    if not (INTERPRET or hopper):
        return False
    page = cache.shape[1]
    rows = cache.shape[0] * page
    inner = cache.stride(1)
    return (
        page % block_n == 0
        and all(w == next_pow2(w) and w * cache.element_size() >= 16 for w in widths)
        and cache.stride(-1) == 1
        and cache.stride(0) == page * inner
        and (inner * cache.element_size()) % 16 == 0
        and cache.data_ptr() % 16 == 0
        and rows < 2**31
    )


def make_descriptor(flat: torch.Tensor, block_shape: list[int]):
    """A host-side TMA descriptor of the 2-D tensor ``flat`` with the given tile shape."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor(flat, list(flat.shape), list(flat.stride()), block_shape)


@triton.jit
def split_range(seq_len, Tq, pid_s, n_splits, BLOCK_N: tl.constexpr):
    """The cached positions ``[start, end)`` split ``pid_s`` of ``n_splits`` reads (whole tiles
    of ``BLOCK_N``), and ``full_end``: tiles before it need no causal mask (positions below
    ``seq_len - Tq + 1`` are visible to every query row)."""
    per = tl.cdiv(tl.cdiv(seq_len, BLOCK_N), n_splits)
    start = pid_s * per * BLOCK_N
    end = tl.minimum(start + per * BLOCK_N, seq_len)
    full_end = start + tl.maximum(tl.minimum(end, seq_len - Tq + 1) - start, 0) // BLOCK_N * BLOCK_N
    return start, end, full_end


@triton.jit
def load_cols(row_ptrs, offs_n, end, offs_c, C: tl.constexpr, C_PAD: tl.constexpr,
              MASK: tl.constexpr):
    """Load a [BLOCK_N, C_PAD] tile of columns ``offs_c`` of each row (zeros where masked:
    rows at or past ``end`` when ``MASK``, columns past ``C``)."""
    ptrs = row_ptrs[:, None] + offs_c[None, :]
    if MASK:
        if C_PAD != C:
            return tl.load(ptrs, mask=(offs_n < end)[:, None] & (offs_c < C)[None, :], other=0.0)
        return tl.load(ptrs, mask=(offs_n < end)[:, None], other=0.0)
    if C_PAD != C:
        return tl.load(ptrs, mask=(offs_c < C)[None, :], other=0.0)
    return tl.load(ptrs)


@triton.jit
def tile_pages(bt_row_ptr, n0, end, PAGE: tl.constexpr, BLOCK_N: tl.constexpr,
               SCALAR_PAGE: tl.constexpr, MASK: tl.constexpr):
    """Token indices ``n0 + arange(BLOCK_N)`` of a tile, their page (int64; one scalar when the
    tile lies in one page) and their slot inside the page. Rows at or past ``end`` read page 0
    when ``MASK`` (their loads are masked)."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    if SCALAR_PAGE:
        page = tl.load(bt_row_ptr + n0 // PAGE).to(tl.int64)
        slot = (n0 % PAGE) + tl.arange(0, BLOCK_N)
    else:
        if MASK:
            page = tl.load(bt_row_ptr + offs_n // PAGE, mask=offs_n < end, other=0).to(tl.int64)
        else:
            page = tl.load(bt_row_ptr + offs_n // PAGE).to(tl.int64)
        slot = offs_n % PAGE
    return offs_n, page, slot


@triton.jit
def _merge_kernel(
    o_ws_ptr, lse_ws_ptr, out_ptr, lse_ptr,
    rows, n_splits,
    s_ows, s_owr, s_lws,
    s_or,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr = 0,
    trace_ptr=None,
):
    """out[r] = sum_s exp(lse_s[r] - lse[r]) * o_s[r]; lse[r] = log sum_s exp(lse_s[r]).

    Up to ``BLOCK_S`` splits (the usual case) are read in one pass, the LSEs and the partials
    loaded together (no load waits for another); more are read ``BLOCK_S`` at a time. Every
    split stored a finite partial (zeros where it saw no position), so a zero weight needs no
    mask on the partial's load."""
    trace_mark(trace_ptr, 0)
    pdl_wait(PDL)
    trace_mark(trace_ptr, 1)
    pdl_launch_next(PDL)
    trace_mark(trace_ptr, 2)
    r = tl.program_id(0)
    d0 = tl.program_id(1) * BLOCK_D
    offs_d = d0 + tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    if n_splits <= BLOCK_S:
        ss = tl.arange(0, BLOCK_S)
        s_ok = ss < n_splits
        ls = tl.load(lse_ws_ptr + ss * s_lws + r, mask=s_ok, other=float("-inf"))
        o = tl.load(o_ws_ptr + ss[:, None] * s_ows + r * s_owr + offs_d[None, :],
                    mask=s_ok[:, None] & d_ok[None, :], other=0.0)
        m_max = tl.max(ls, 0)
        m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)
        ws = tl.exp(ls - m_safe)
        tot = tl.sum(ws, 0)
        acc = tl.sum(ws[:, None] * o, 0)
    else:
        m = tl.full([BLOCK_S], float("-inf"), tl.float32)
        for s0 in range(0, n_splits, BLOCK_S):
            ss = s0 + tl.arange(0, BLOCK_S)
            m = tl.maximum(m, tl.load(lse_ws_ptr + ss * s_lws + r, mask=ss < n_splits,
                                      other=float("-inf")))
        m_max = tl.max(m, 0)
        m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        total = tl.zeros([BLOCK_S], dtype=tl.float32)
        for s0 in range(0, n_splits, BLOCK_S):
            ss = s0 + tl.arange(0, BLOCK_S)
            s_ok = ss < n_splits
            ls = tl.load(lse_ws_ptr + ss * s_lws + r, mask=s_ok, other=float("-inf"))
            ws = tl.exp(ls - m_safe)
            total += ws
            o = tl.load(o_ws_ptr + ss[:, None] * s_ows + r * s_owr + offs_d[None, :],
                        mask=s_ok[:, None] & d_ok[None, :], other=0.0)
            acc += tl.sum(ws[:, None] * o, 0)
        tot = tl.sum(total, 0)
    ok = tot > 0
    tot_safe = tl.where(ok, tot, 1.0)
    tl.store(out_ptr + r * s_or + offs_d, acc * tl.where(ok, 1.0 / tot_safe, 0.0), mask=d_ok)
    if d0 == 0:
        tl.store(lse_ptr + r, tl.where(ok, m_safe + tl.log(tot_safe), float("-inf")))
    trace_mark(trace_ptr, 3)


@dataclasses.dataclass(frozen=True)
class MergeConfig:
    """Launch parameters of the split merge (``None``: every split in one pass up to 256,
    tiles of at most 8192 partial values, 4 warps)."""

    #: splits read per pass (a power of two; fewer than the splits loops over them)
    block_s: int | None = None
    #: columns per program (a power of two)
    block_d: int | None = None
    num_warps: int | None = None


MERGE_CONFIG_ENV = "MLRA_MERGE_CONFIG"
"""Environment variable with :class:`MergeConfig` fields as JSON, for tuning runs of whole
decode steps."""


def merge_splits(
    o_ws: torch.Tensor, lse_ws: torch.Tensor, out: torch.Tensor, lse: torch.Tensor
) -> None:
    """Merge split partials ``o_ws [S, rows, D]`` / ``lse_ws [S, rows]`` into ``out [rows, D]``
    and ``lse [rows]`` (all fp32, contiguous in the last dim)."""
    n_splits, rows, d = o_ws.shape
    cfg = config_from_env(MERGE_CONFIG_ENV, MergeConfig) or MergeConfig()
    block_s = cfg.block_s or min(256, max(2, next_pow2(n_splits)))
    block_d = cfg.block_d or max(16, min(128, next_pow2(d), 8192 // block_s))
    grid = (rows, triton.cdiv(d, block_d))
    pdl = pdl_mode(out)
    _merge_kernel[grid](
        o_ws, lse_ws, out, lse, rows, n_splits,
        o_ws.stride(0), o_ws.stride(1), lse_ws.stride(0), out.stride(0),
        D=d, BLOCK_D=block_d, BLOCK_S=block_s, PDL=pdl, trace_ptr=trace_slot("merge", grid, out),
        num_warps=cfg.num_warps or 4, **launch_options(pdl),
    )
