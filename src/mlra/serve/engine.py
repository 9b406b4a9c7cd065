"""The continuous-batching engine: :class:`Engine` (``add_request`` / ``step`` / ``abort``).

One shared :class:`~mlra.cache.PagedKVCache` holds every running sequence. Each :meth:`Engine.step`

1. admits waiting requests (first come, first served) while the cache has room for their
   prompt and the running batch is below ``max_batch_size``;
2. makes room for the next token of every decoding sequence, preempting the most recently
   admitted sequence when pages run out (its pages are freed; it waits again at the front of
   the queue and is recomputed from its prompt and the tokens it already produced);
3. decodes one token for every sequence past its prompt (the paged step; CUDA graphs per batch
   bucket on a GPU through :class:`~mlra.decoding.Decoder`);
4. prefills the next chunk of the prompts being admitted, at most ``prefill_chunk`` prompt
   tokens per step while other sequences decode, so a long prompt does not stall everyone's
   next token (with none decoding, whole prompts at once).

Requests are never lost: a request whose prompt and ``max_tokens`` cannot fit the whole cache is
refused by :meth:`Engine.add_request`; every other request eventually runs. A request whose
model call raises fails alone (``finish_reason="error"``); the others go on.

Sampling is per request (temperature, top-k, top-p, a seeded generator of its own), so a
request's tokens do not depend on what else runs with it.

With ``overlap`` (what :func:`mlra.generate` uses on a GPU), a step whose batch is steady --
nothing waiting, prefilling or aborted, no log-probabilities asked for -- launches its decode
from the previous step's sampled tokens while they are still on the device, and only then
reads those tokens on the host (:class:`~mlra.serve.pending.PendingTokens`): the host's
bookkeeping of step ``t`` runs while the device computes step ``t + 1``. Each step then reports
the tokens of the step before. A sequence that stops on a stop token has had one more step
launched; that step's token is dropped (its cache entry lies within the pages promised to the
sequence, ``reserve_full``). A sequence's last step by ``max_tokens`` is known in advance and
never overshoots. Every request gets the same tokens as without overlap, and the steps report
them in the same order, one step later (a launch that raises falls back to the plain decode,
whose step may then report two tokens of a request).
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from mlra import kernels
from mlra.cache import DEFAULT_PAGE_SIZE, CacheFullError, PagedKVCache
from mlra.decoding import Decoder, GenerationError
from mlra.model import Transformer
from mlra.sampling import sample_next, validate_sampling
from mlra.serve.executor import Executor
from mlra.serve.pending import PendingTokens

WAITING, PREFILL, DECODE = "waiting", "prefill", "decode"


@dataclass(frozen=True)
class SamplingParams:
    """How one request is continued.

    ``max_tokens`` new tokens at most; ``temperature`` 0 is greedy; ``seed`` gives the request
    a generator of its own; the request stops after a token of ``stop_token_ids`` (kept as its
    last token). ``logprobs``: also return the log-probability of every new token and of the
    ``logprobs`` likeliest tokens at that position; ``prompt_logprobs``: the same for every
    prompt token (the first has none).
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_token_ids: frozenset[int] = frozenset()
    logprobs: int | None = None
    prompt_logprobs: int | None = None

    def validate(self) -> None:
        """Raise :class:`GenerationError` naming the first parameter out of its domain."""
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or (
            self.max_tokens < 0
        ):
            raise GenerationError(f"max_tokens must be a non-negative integer, "
                                  f"got {self.max_tokens!r}")
        try:
            validate_sampling(self.temperature, self.top_k, self.top_p)
        except ValueError as exc:
            raise GenerationError(str(exc)) from exc
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise GenerationError(f"{name} must be a non-negative integer, got {v!r}")


@dataclass(frozen=True)
class TokenLogprob:
    """Log-probability of a token and the likeliest alternatives ``[(id, logprob), ...]``."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class StepOutput:
    """What one step produced for one request."""

    request_id: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    finished: bool = False
    finish_reason: str | None = None  # "stop", "length", "abort", "error"
    error: str | None = None


@dataclass
class _Request:
    id: int
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator | None
    arrival: float
    out: list[int] = field(default_factory=list)
    state: str = WAITING
    target: int = 0  # tokens to prefill in this admission
    done: int = 0  # of which already prefilled
    prompt_lp: list[TokenLogprob | None] | None = None
    admitted: int = 0  # admission order (the latest admitted is preempted first)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.out


class Engine:
    """Continuous batching of generation requests over one paged cache.

    >>> engine = Engine(model, cache_tokens=8192)
    >>> rid = engine.add_request([1, 2, 3], SamplingParams(max_tokens=8))
    >>> while engine.has_work():
    ...     for out in engine.step():
    ...         print(out.request_id, out.tokens, out.finished)

    - ``cache_tokens``: the cache's token budget (default: the model's context, or room for
      ``max_batch_size`` full-context sequences when that is given); ``page_size`` tokens a page.
    - ``max_batch_size``: most sequences running together (default: as many as fit).
    - ``prefill_chunk``: most prompt tokens prefilled per step while other sequences decode,
      and most tokens per sequence in one forward (default: whole prompts).
    - ``reserve_full``: admit a request only when its whole length (prompt + ``max_tokens``)
      fits next to the others' whole lengths (never preempts; what offline :func:`mlra.generate`
      uses). Default: admit when the prompt fits and grow page by page, preempting when full.
    - ``vocab_limit``: sample only ids below it (a tokenizer smaller than the embedding).
    - ``cuda_graphs`` / ``compile``: see :class:`~mlra.decoding.Decoder` (graphs default to on
      where the step runs through the Triton kernels).
    - ``executor``: run the model through this executor (tensor parallelism: a
      :class:`~mlra.serve.executor.BroadcastExecutor`; a decoder kept between calls, see
      :mod:`mlra.reuse`); by default one over a new cache. ``max_pages``: the pages of its
      cache this engine may hold (default: all), so a larger cache kept from an earlier call
      schedules exactly as a cache of this size would.
    - ``overlap``: launch each steady decode step before reading the previous step's tokens on
      the host (see the module's docstring); needs ``reserve_full`` and an executor that takes
      device-resident inputs (not the tensor-parallel one).
    """

    def __init__(
        self,
        model: Transformer,
        *,
        cache_tokens: int | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_batch_size: int | None = None,
        prefill_chunk: int | None = None,
        reserve_full: bool = False,
        vocab_limit: int | None = None,
        cuda_graphs: bool | None = None,
        compile: bool | dict = False,
        executor: Executor | None = None,
        max_pages: int | None = None,
        overlap: bool = False,
    ) -> None:
        cfg = model.config
        if max_batch_size is not None and max_batch_size < 1:
            raise GenerationError(f"max_batch_size must be positive, got {max_batch_size}")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise GenerationError(f"prefill_chunk must be positive, got {prefill_chunk}")
        if vocab_limit is not None and not 1 <= vocab_limit <= cfg.vocab_size:
            raise GenerationError(f"vocab_limit must be in [1, {cfg.vocab_size}], "
                                  f"got {vocab_limit}")
        self.model = model
        self.config = cfg
        self.max_batch_size = max_batch_size
        self.prefill_chunk = prefill_chunk
        self.reserve_full = reserve_full
        self.vocab_limit = vocab_limit
        if executor is None:
            executor = Executor(make_decoder(model, cache_tokens, page_size, max_batch_size,
                                             cuda_graphs=cuda_graphs, compile=compile))
        self.executor = executor
        self.cache: PagedKVCache = executor.cache
        self.device = self.cache.device
        if max_pages is not None and not 1 <= max_pages <= self.cache.num_pages:
            raise GenerationError(f"max_pages must be in [1, {self.cache.num_pages}] (the "
                                  f"cache's pages), got {max_pages}")
        self.num_pages = self.cache.num_pages if max_pages is None else max_pages
        self._ids = itertools.count()
        self._admissions = itertools.count()
        self.waiting: deque[_Request] = deque()
        self.running: dict[int, _Request] = {}
        self._aborted: list[int] = []
        self._committed = 0  # reserve_full: pages promised to running requests
        self.preemptions = 0
        self.tokens_generated = 0
        if overlap and not (reserve_full and executor.device_inputs):
            raise GenerationError("overlap needs reserve_full and an executor that takes "
                                  "device-resident inputs")
        self.overlap = overlap
        self._pending: PendingTokens | None = None  # overlap: the last step's tokens, unread

    # ------------------------------------------------------------------ requests
    def add_request(self, prompt: Sequence[int], sampling: SamplingParams | None = None) -> int:
        """Queue a request; returns its id. :class:`GenerationError` for an invalid request
        (empty prompt, token outside the vocabulary, longer than the context);
        :class:`~mlra.cache.CacheFullError` when it could never fit the whole cache."""
        params = sampling or SamplingParams()
        params.validate()
        cfg = self.config
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise GenerationError("the prompt is empty; give at least one token")
        bad = [t for t in prompt if not 0 <= t < cfg.vocab_size]
        if bad:
            raise GenerationError(f"token id {bad[0]} is outside the vocabulary "
                                  f"[0, {cfg.vocab_size})")
        total = len(prompt) + params.max_tokens
        if total > cfg.max_seq_len:
            raise GenerationError(
                f"the prompt has {len(prompt)} tokens; with {params.max_tokens} new tokens that "
                f"is {total} > the model's context of {cfg.max_seq_len} tokens")
        need = self._full_pages(len(prompt), params.max_tokens)
        if need > self.num_pages:
            raise CacheFullError(
                f"a request of {total} tokens needs {need * self.cache.page_size} cache tokens, "
                f"the budget holds {self.num_pages * self.cache.page_size}; raise "
                "cache_tokens")
        gen = None
        if params.seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(params.seed)
        req = _Request(next(self._ids), prompt, params, gen, time.monotonic())
        self.waiting.append(req)
        return req.id

    def abort(self, request_id: int) -> None:
        """Stop a request (waiting or running) at the next step and free its pages; the step
        reports it finished with ``finish_reason="abort"``. Unknown ids are ignored."""
        self._aborted.append(request_id)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._aborted or self._pending)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def pages_used(self) -> int:
        return self.cache.num_pages - self.cache.num_free_pages

    @property
    def num_free_pages(self) -> int:
        """Free pages within this engine's budget (``max_pages``)."""
        return self.cache.num_free_pages - (self.cache.num_pages - self.num_pages)

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self) -> list[StepOutput]:
        """Run one scheduling step; returns the requests that produced tokens or finished."""
        outputs: dict[int, StepOutput] = {}
        if self._pending is not None and not self._steady():
            self._resolve(outputs)  # the tokens of the overlapped step before, on their own
            return list(outputs.values())
        self._process_aborts(outputs)
        self._admit()
        self._make_room()
        self._decode(outputs)
        self._prefill(outputs)
        return list(outputs.values())

    def _steady(self) -> bool:
        """Whether this step may overlap: nothing waiting, prefilling or aborted, and no
        request asks for log-probabilities (they need the logits on the host)."""
        return self.overlap and not self.waiting and not self._aborted and all(
            r.state == DECODE and r.params.logprobs is None for r in self.running.values())

    def _out(self, outputs: dict[int, StepOutput], rid: int) -> StepOutput:
        if rid not in outputs:
            outputs[rid] = StepOutput(rid)
        return outputs[rid]

    def _process_aborts(self, outputs: dict[int, StepOutput]) -> None:
        if not self._aborted:
            return
        ids, self._aborted = set(self._aborted), []
        for req in [r for r in self.waiting if r.id in ids]:
            self.waiting.remove(req)
            self._finish(outputs, req, "abort")
        for req in [r for r in self.running.values() if r.id in ids]:
            self._finish(outputs, req, "abort")

    def _full_pages(self, prompt_len: int, max_tokens: int) -> int:
        """Pages a request holds at its longest (every token but the last is cached)."""
        return max(1, self.cache.pages_for(prompt_len + max_tokens - 1))

    def _admit(self) -> None:
        while self.waiting:
            if self.max_batch_size is not None and len(self.running) >= self.max_batch_size:
                return
            req = self.waiting[0]
            resumed = bool(req.out)
            target = len(req.tokens) - 1 if resumed else len(req.prompt)
            if self.reserve_full:
                need = self._full_pages(len(req.prompt), req.params.max_tokens)
                if self._committed + need > self.num_pages:
                    return
                self._committed += need
            else:
                decoding = sum(1 for r in self.running.values() if r.state == DECODE)
                # room for the prompt (and its first new token) and one page of headroom for
                # every sequence already decoding; alone, a request always fits (add_request)
                need = self.cache.pages_for(target + 1)
                room = self.num_free_pages - (decoding if self.running else 0)
                if need > room:
                    return
            self.waiting.popleft()
            req.state, req.target, req.done = PREFILL, target, 0
            req.admitted = next(self._admissions)
            self.running[req.id] = req
            if target:
                self.executor.reserve([req.id], [target])

    def _make_room(self) -> None:
        """Preempt the latest admitted sequences until every decoding one has room for its
        next token (never needed with ``reserve_full``: every admitted request's whole length
        is promised)."""
        while not self.reserve_full:
            dec = [r for r in self.running.values() if r.state == DECODE]
            need = sum(
                max(0, self.cache.pages_for(self.executor.length(r.id) + 1)
                    - self.executor.pages(r.id))
                for r in dec)
            if need <= self.num_free_pages or len(self.running) <= 1:
                return
            victim = max(self.running.values(), key=lambda r: r.admitted)
            self._preempt(victim)

    def _preempt(self, req: _Request) -> None:
        self.executor.release([req.id])
        del self.running[req.id]
        if self.reserve_full:
            self._committed -= self._full_pages(len(req.prompt), req.params.max_tokens)
        req.state = WAITING
        self.waiting.appendleft(req)
        self.preemptions += 1

    def _finish(self, outputs: dict[int, StepOutput], req: _Request, reason: str,
                error: str | None = None) -> None:
        if req.id in self.running:
            self.executor.release([req.id])
            del self.running[req.id]
            if self.reserve_full:
                self._committed -= self._full_pages(len(req.prompt), req.params.max_tokens)
        out = self._out(outputs, req.id)
        out.finished, out.finish_reason, out.error = True, reason, error

    # ------------------------------------------------------------------ model calls
    def _run_isolated(self, reqs: list[_Request], call, outputs: dict[int, StepOutput]):
        """``call(reqs)`` -> logits; when it raises, retry each request alone and fail those
        that still raise (the decoder has rolled their cache back). Returns ``(reqs, logits)``
        for the requests that ran."""
        try:
            return reqs, call(reqs)
        except (GenerationError, CacheFullError, RuntimeError, ValueError, IndexError) as exc:
            if len(reqs) == 1:
                self._finish(outputs, reqs[0], "error", f"{type(exc).__name__}: {exc}")
                return [], None
        ok, rows = [], []
        for r in reqs:
            got, logits = self._run_isolated([r], call, outputs)
            if got:
                ok.append(r)
                rows.append(logits)
        return ok, (torch.cat(rows) if rows else None)

    def _decode(self, outputs: dict[int, StepOutput]) -> None:
        if self._steady() and self._decode_overlapped(outputs):
            return
        if self._pending is not None:  # (only after an overlapped launch failed)
            self._resolve(outputs)
        reqs = [r for r in self.running.values() if r.state == DECODE]
        if not reqs:
            return
        reqs, logits = self._run_isolated(
            reqs, lambda rs: self.executor.decode([r.id for r in rs], [r.out[-1] for r in rs]),
            outputs)
        if reqs:
            self._emit(reqs, logits, outputs)

    def _decode_overlapped(self, outputs: dict[int, StepOutput]) -> bool:
        """Launch this step from the device-resident tokens of the last one (or the host's
        tokens when there is no pending step), sample on the device, then read and apply the
        last step's tokens. False when the launch raised (nothing launched: the sequences are
        as they were; the caller decodes without overlap, isolating the failure)."""
        pending = self._pending
        # a request whose pending token is its last (max_tokens) is not decoded again
        reqs = [r for r in self.running.values()
                if len(r.out) + (pending is not None and pending.row(r) is not None)
                < r.params.max_tokens]
        launched = None
        if reqs:
            ids = pending.inputs(reqs) if pending is not None else self._host_inputs(reqs)
            if ids is None:  # not the last step's requests (cannot happen while steady)
                return False
            try:
                logits = self.executor.decode_ids([r.id for r in reqs], ids)
            except (GenerationError, CacheFullError, RuntimeError, ValueError, IndexError):
                return False
            launched = PendingTokens(reqs, self._sample(reqs, logits))
        if pending is not None:
            self._pending = None
            self._resolve_tokens(pending, outputs)
        self._pending = launched
        return True

    def _host_inputs(self, reqs: list[_Request]) -> torch.Tensor:
        """Input ids ``[batch, 1]`` on the device from the requests' last host tokens."""
        ids = torch.tensor([r.out[-1] for r in reqs], dtype=torch.long)[:, None]
        return ids.to(self.device, non_blocking=True)

    def _resolve(self, outputs: dict[int, StepOutput]) -> None:
        """Read and apply the pending step's tokens (waits for the device)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._resolve_tokens(pending, outputs)

    def _resolve_tokens(self, pending: PendingTokens, outputs: dict[int, StepOutput]) -> None:
        """Apply a step's tokens to the requests still running; a row of a request that
        finished meanwhile (its stop token came the step before) is dropped."""
        live = [(r, t) for r, t in zip(pending.reqs, pending.host(), strict=True)
                if self.running.get(r.id) is r]
        if live:
            self._accept([r for r, _ in live], [t for _, t in live], outputs)

    def _prefill(self, outputs: dict[int, StepOutput]) -> None:
        reqs = sorted((r for r in self.running.values() if r.state == PREFILL),
                      key=lambda r: r.admitted)
        if not reqs:
            return
        # the chunk bounds how long running sequences wait for their next token: with none
        # decoding, nobody waits and the prompts are prefilled whole (one call, as a batch)
        decoding = any(r.state == DECODE for r in self.running.values())
        budget = math.inf if self.prefill_chunk is None or not decoding else self.prefill_chunk
        plan: list[tuple[_Request, int]] = []
        for r in reqs:
            if budget <= 0:
                break
            n = int(min(budget, r.target - r.done))
            if n > 0:
                plan.append((r, n))
                budget -= n
            elif r.target == 0:  # nothing to prefill (never happens: prompts are non-empty)
                r.state = DECODE
        if not plan:
            return
        want_lp = [(r, n) for r, n in plan if self._wants_prompt_lp(r)]
        plain = [(r, n) for r, n in plan if not self._wants_prompt_lp(r)]
        for group, all_logits in ((plain, False), (want_lp, True)):
            if not group:
                continue
            size = dict((r.id, n) for r, n in group)

            def call(rs, all_logits=all_logits, size=size):
                chunks = [r.tokens[r.done:r.done + size[r.id]] for r in rs]
                return self.executor.prefill([r.id for r in rs], chunks, all_logits,
                                             self.prefill_chunk)

            ran, logits = self._run_isolated([r for r, _ in group], call, outputs)
            if not ran:
                continue
            if all_logits:
                for i, r in enumerate(ran):
                    self._collect_prompt_lp(r, logits[i, : size[r.id]])
                logits = torch.stack([logits[i, size[r.id] - 1] for i, r in enumerate(ran)])
            complete = []
            for i, r in enumerate(ran):
                r.done += size[r.id]
                if r.done == r.target:
                    complete.append(i)
            emit = []
            for i in complete:
                r = ran[i]
                r.state = DECODE
                if r.params.prompt_logprobs is not None and r.prompt_lp is not None:
                    out = self._out(outputs, r.id)
                    out.prompt_logprobs, r.prompt_lp = r.prompt_lp, None
                    r.params = _done_prompt_lp(r.params)
                if r.out:  # resumed after preemption: the next input is its last token
                    continue
                if r.params.max_tokens == 0:
                    self._finish(outputs, r, "length")
                    continue
                emit.append(i)
            if emit:
                self._emit([ran[i] for i in emit], logits[emit], outputs)

    def _wants_prompt_lp(self, r: _Request) -> bool:
        return r.params.prompt_logprobs is not None and not r.out

    def _collect_prompt_lp(self, r: _Request, logits: torch.Tensor) -> None:
        """Log-probabilities of the prompt tokens that follow the chunk's positions."""
        if r.prompt_lp is None:
            r.prompt_lp = [None]
        k = r.params.prompt_logprobs or 0
        lp = self._log_softmax(logits)
        for j in range(lp.shape[0]):
            pos = r.done + j + 1
            if pos < len(r.prompt):
                r.prompt_lp.append(_token_logprob(lp[j], r.prompt[pos], k))

    def _log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.vocab_limit is not None:
            logits = logits[..., : self.vocab_limit]
        return torch.log_softmax(logits, dim=-1)

    def _sample(self, reqs: list[_Request], logits: torch.Tensor) -> torch.Tensor:
        """One token per request, int64 ``[batch]`` on the logits' device (grouped by sampling
        parameters; no host synchronisation)."""
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(reqs):
            p = r.params
            groups.setdefault((p.temperature, p.top_k, p.top_p), []).append(i)
        if len(groups) == 1:  # the usual case: the whole batch at once, no gather of rows
            (temp, top_k, top_p), = groups
            return sample_next(logits, temp, top_k, top_p, [r.generator for r in reqs],
                               vocab_limit=self.vocab_limit)
        tokens = torch.empty(len(reqs), dtype=torch.long, device=logits.device)
        for (temp, top_k, top_p), rows in groups.items():
            tokens[rows] = sample_next(logits[rows], temp, top_k, top_p,
                                       [reqs[i].generator for i in rows],
                                       vocab_limit=self.vocab_limit)
        return tokens

    def _emit(self, reqs: list[_Request], logits: torch.Tensor,
              outputs: dict[int, StepOutput]) -> None:
        """Sample one token per request (one read of the picked tokens), add the asked-for
        log-probabilities and finish the requests that are done."""
        tokens = self._sample(reqs, logits).tolist()
        lp_rows = [i for i, r in enumerate(reqs) if r.params.logprobs is not None]
        lps = self._log_softmax(logits[lp_rows]) if lp_rows else None
        for k, i in enumerate(lp_rows):
            r = reqs[i]
            out = self._out(outputs, r.id)
            out.logprobs = (out.logprobs or []) + [
                _token_logprob(lps[k], tokens[i], r.params.logprobs or 0)]
        self._accept(reqs, tokens, outputs)

    def _accept(self, reqs: list[_Request], tokens: list[int],
                outputs: dict[int, StepOutput]) -> None:
        """Append one sampled token to each request; finish those that stop or are full."""
        for r, t in zip(reqs, tokens, strict=True):
            r.out.append(t)
            self.tokens_generated += 1
            self._out(outputs, r.id).tokens.append(t)
            if t in r.params.stop_token_ids:
                self._finish(outputs, r, "stop")
            elif len(r.out) >= r.params.max_tokens:
                self._finish(outputs, r, "length")


def _token_logprob(lp: torch.Tensor, token: int, k: int) -> TokenLogprob:
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        vals, idx = torch.topk(lp, min(k, lp.shape[-1]))
        top = tuple(zip(idx.tolist(), vals.tolist(), strict=True))
    return TokenLogprob(token, float(lp[token]), top)


def _done_prompt_lp(params: SamplingParams) -> SamplingParams:
    """The same parameters without prompt log-probabilities (already delivered: a preempted
    request does not compute them again)."""
    from dataclasses import replace

    return replace(params, prompt_logprobs=None)


def make_decoder(
    model: Transformer,
    cache_tokens: int | None,
    page_size: int = DEFAULT_PAGE_SIZE,
    max_batch_size: int | None = None,
    *,
    cuda_graphs: bool | None = None,
    compile: bool | dict = False,
) -> Decoder:
    """A :class:`~mlra.decoding.Decoder` over a new cache of ``cache_tokens`` tokens (default:
    ``max_batch_size`` -- or one -- full-context sequences) on the model's device and dtype."""
    cfg = model.config
    param = next(model.parameters())
    if cache_tokens is None:
        cache_tokens = cfg.max_seq_len * (max_batch_size or 1)
    if cache_tokens < 1:
        raise GenerationError(f"cache_tokens must be positive, got {cache_tokens}")
    num_pages = max(1, math.ceil(cache_tokens / page_size))
    cuda_graphs = resolve_cuda_graphs(model, cuda_graphs)
    cache = PagedKVCache(cfg, num_pages, page_size, dtype=param.dtype, device=param.device)
    return Decoder(model, cache, compile=compile, cuda_graphs=cuda_graphs)


def resolve_cuda_graphs(model: Transformer, cuda_graphs: bool | None) -> bool:
    """``cuda_graphs``, or when None whether the decode step of ``model`` runs through the
    (capturable) Triton kernels; :class:`GenerationError` when asked for off a CUDA device."""
    param = next(model.parameters())
    if cuda_graphs is None:
        return kernels.triton_decodes(param.device, param.dtype)
    if cuda_graphs and param.device.type != "cuda":
        raise GenerationError(f"cuda_graphs needs the model on a CUDA device, not "
                              f"{param.device}")
    return bool(cuda_graphs)


def run_to_completion(engine: Engine, ids: Iterable[int]) -> dict[int, list[int]]:
    """Step ``engine`` until the requests ``ids`` finish; their new tokens by id."""
    want = set(ids)
    outs: dict[int, list[int]] = {i: [] for i in want}
    while want:
        for o in engine.step():
            if o.request_id in outs:
                outs[o.request_id].extend(o.tokens)
                if o.finished:
                    want.discard(o.request_id)
    return outs
