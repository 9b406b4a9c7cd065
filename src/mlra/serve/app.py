"""The OpenAI-compatible HTTP front end (FastAPI): ``create_app(state)``.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus text), and the remote-tokenizer routes
``GET /tokenizer_info``, ``POST /tokenize``, ``POST /detokenize`` that lm-eval's
``local-completions`` model uses to send token ids.

Each choice of a request is one engine request; its outputs travel from the engine thread to
the handler through an asyncio queue. A client that goes away aborts its requests (their pages
are freed at the next step).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from mlra.cache import CacheFullError
from mlra.data.tokenizers import EOT_TEXT, Tokenizer
from mlra.decoding import GenerationError
from mlra.serve.engine import SamplingParams, StepOutput
from mlra.serve.loop import EngineLoop
from mlra.serve.metrics import ServeMetrics
from mlra.serve.protocol import (
    MAX_LOGPROBS,
    ApiError,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    check_sampling,
    error_body,
)
from mlra.serve.text import Choice


@dataclass
class ServerState:
    """What the routes need: the engine loop, the tokenizer and the model's limits."""

    loop: EngineLoop
    metrics: ServeMetrics
    model_name: str
    max_model_len: int
    vocab_size: int
    tokenizer: Tokenizer | None = None
    chat_template: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # extra fields of GET /health
    on_shutdown: list = field(default_factory=list)


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI application serving ``state``."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        state.loop.stop()
        for fn in state.on_shutdown:
            fn()

    app = FastAPI(title="mlra serve", lifespan=lifespan)
    app.state.serve = state

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if err.get("type") == "json_invalid":
            return JSONResponse(error_body(f"malformed JSON body: {err.get('msg', '')}",
                                           param="body"), status_code=400)
        param = loc[0] if loc else "body"
        where = ".".join(loc) or "body"
        msg = f"{where}: {err.get('msg', 'invalid value')}"
        return JSONResponse(error_body(msg, param=param), status_code=400)

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = state.loop.alive
        body = {"status": "ok" if ok else "error", **state.info}
        if not ok and state.loop.fatal is not None:
            body["error"] = str(state.loop.fatal)
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{
            "id": state.model_name, "object": "model", "created": int(time.time()),
            "owned_by": "mlra", "max_model_len": state.max_model_len}]}

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict:
        tok = _need_tokenizer(state, "tokenizer")
        return {"eos_token": EOT_TEXT, "bos_token": None, "pad_token": None,
                "chat_template": state.chat_template, "model_max_length": state.max_model_len,
                "tokenizer_class": tok.name}

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> dict:
        tok = _need_tokenizer(state, "prompt")
        ids = [tok.eot_id] if req.prompt == EOT_TEXT else tok.encode(req.prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": state.max_model_len}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> dict:
        tok = _need_tokenizer(state, "tokens")
        try:
            return {"prompt": tok.decode(req.tokens)}
        except Exception as exc:  # noqa: BLE001 - the tokenizer's own error, as a 400
            raise ApiError(400, f"tokens: {exc}", "tokens") from None

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        _check_model(state, body.model)
        check_sampling(body)
        if body.logprobs is not None and not 0 <= body.logprobs <= MAX_LOGPROBS:
            raise ApiError(400, f"logprobs must be in [0, {MAX_LOGPROBS}], got {body.logprobs}",
                           "logprobs")
        prompts = _completion_prompts(state, body.prompt)
        subs = _sub_requests(state, body, prompts, body.max_tokens, echo=body.echo,
                             logprobs=body.logprobs)
        return await _respond(state, request, body, subs, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        _check_model(state, body.model)
        check_sampling(body)
        if state.chat_template is None:
            raise ApiError(400, "this model's tokenizer has no chat template: use "
                           "/v1/completions with a plain prompt", "messages",
                           code="chat_template_missing")
        tok = _need_tokenizer(state, "messages")
        text = _render_chat(state.chat_template, [m.model_dump() for m in body.messages])
        ids = tok.encode(text)
        lp = (body.top_logprobs or 0) if body.logprobs else None
        subs = _sub_requests(state, body, [(ids, text)],
                             body.max_completion_tokens or body.max_tokens, echo=False,
                             logprobs=lp)
        return await _respond(state, request, body, subs, chat=True)

    return app


# ----------------------------------------------------------------------------- validation
def _check_model(state: ServerState, name: str | None) -> None:
    if name is not None and name != state.model_name:
        raise ApiError(404, f"model {name!r} does not exist; this server serves "
                       f"{state.model_name!r} (GET /v1/models)", "model", code="model_not_found")


def _need_tokenizer(state: ServerState, param: str) -> Tokenizer:
    if state.tokenizer is None:
        raise ApiError(400, "this server has no tokenizer: send prompts as token ids", param)
    return state.tokenizer


def _completion_prompts(state: ServerState, prompt: Any) -> list[tuple[list[int], str | None]]:
    """Every prompt of the request as (token ids, text or None)."""
    if isinstance(prompt, str):
        prompt = [prompt]
    elif prompt and all(isinstance(t, int) for t in prompt):
        prompt = [prompt]
    if not prompt:
        raise ApiError(400, "prompt is empty", "prompt")
    out = []
    for i, p in enumerate(prompt):
        where = "prompt" if len(prompt) == 1 else f"prompt[{i}]"
        if isinstance(p, str):
            ids = _need_tokenizer(state, "prompt").encode(p)
            text: str | None = p
        else:
            ids, text = list(p), None
        if not ids:
            raise ApiError(400, f"{where} is empty; give at least one token", "prompt")
        bad = [t for t in ids if not 0 <= t < state.vocab_size]
        if bad:
            raise ApiError(400, f"{where} holds token id {bad[0]}, outside the vocabulary "
                           f"[0, {state.vocab_size})", "prompt")
        out.append((ids, text))
    return out


@dataclass
class _Sub:
    index: int
    prompt: list[int]
    text: str | None
    params: SamplingParams


def _sub_requests(state: ServerState, body: Any, prompts: list[tuple[list[int], str | None]],
                  max_tokens: int | None, echo: bool, logprobs: int | None) -> list[_Sub]:
    ctx = state.max_model_len
    tok = state.tokenizer
    stops = frozenset() if body.ignore_eos or tok is None else frozenset([tok.eot_id])
    top_k = None if body.top_k in (None, -1) else body.top_k
    subs = []
    for i, (ids, text) in enumerate(prompts):
        if len(ids) >= ctx and not (echo and max_tokens == 0 and len(ids) <= ctx):
            raise ApiError(400, f"the prompt has {len(ids)} tokens; the model's context is "
                           f"{ctx} tokens, which leaves no room for new ones", "prompt",
                           code="context_length_exceeded")
        n_new = max_tokens if max_tokens is not None else min(16, ctx - len(ids))
        if n_new < 0 or (n_new == 0 and not echo):
            raise ApiError(400, f"max_tokens must be a positive integer, got {n_new}",
                           "max_tokens")
        if len(ids) + n_new > ctx:
            raise ApiError(400, f"the prompt has {len(ids)} tokens and max_tokens is {n_new}: "
                           f"{len(ids) + n_new} > the model's context of {ctx} tokens",
                           "max_tokens", code="context_length_exceeded")
        params = SamplingParams(
            max_tokens=n_new, temperature=body.temperature, top_k=top_k,
            top_p=None if body.top_p >= 1 else body.top_p, seed=body.seed,
            stop_token_ids=stops, logprobs=logprobs,
            prompt_logprobs=logprobs if echo and logprobs is not None else None)
        for j in range(body.n):
            index = i * body.n + j
            seed = None if body.seed is None else body.seed + index
            subs.append(_Sub(index, ids, text, replace(params, seed=seed)))
    return subs


def _render_chat(template: str, messages: list[dict]) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                                eos_token=EOT_TEXT, bos_token="")
    except Exception as exc:  # noqa: BLE001 - a template error concerns these messages
        raise ApiError(400, f"the chat template failed on these messages: {exc}",
                       "messages") from None


# ----------------------------------------------------------------------------- running
async def _events(state: ServerState, request: Request, subs: list[_Sub],
                  choices: dict[int, Choice]) -> AsyncIterator[tuple[int, StepOutput]]:
    """Submit every choice and yield ``(index, output)`` as they come; abort whatever is
    unfinished when the consumer stops (client gone, stop string, error)."""
    aio = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    handles = {}
    for sub in subs:
        def sink(ev, index=sub.index):
            aio.call_soon_threadsafe(queue.put_nowait, (index, ev))
        handles[sub.index] = state.loop.submit(sub.prompt, sub.params, sink)
    open_ = set(handles)
    try:
        while open_:
            try:
                index, ev = await asyncio.wait_for(queue.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return
                continue
            if index not in open_:
                continue  # ended by a stop string: the abort's own output
            if isinstance(ev, BaseException):
                raise _engine_error(ev)
            if ev.finished:
                open_.discard(index)
            yield index, ev
            if choices[index].finished and index in open_:  # a stop string ended it
                open_.discard(index)
                state.loop.abort(handles[index])
    finally:
        for index in open_:
            state.loop.abort(handles[index])


def _engine_error(exc: BaseException) -> ApiError:
    if isinstance(exc, CacheFullError):
        return ApiError(400, str(exc), "max_tokens")
    if isinstance(exc, GenerationError):
        return ApiError(400, str(exc), "prompt")
    return ApiError(503, f"the engine stopped: {exc}", None, kind="server_error")


async def _respond(state: ServerState, request: Request, body: Any, subs: list[_Sub],
                   chat: bool):
    tok = state.tokenizer
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    eot = None if tok is None else tok.eot_id
    choices = {s.index: Choice(s.index, tok, stops, eot, s.prompt) for s in subs}
    if getattr(body, "echo", False):
        for s in subs:
            c = choices[s.index]
            c.prefix = s.text if s.text is not None else c.decode(s.prompt)
    meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "created": int(time.time()), "model": state.model_name}
    if body.stream:
        return StreamingResponse(_stream(state, request, body, subs, choices, meta, chat),
                                 media_type="text/event-stream")
    async for index, ev in _events(state, request, subs, choices):
        choices[index].add(ev)
    failed = [c for c in choices.values() if c.finish_reason == "error"]
    if failed:
        raise ApiError(500, f"the model failed on choice {failed[0].index}: {failed[0].error}",
                       None, kind="server_error")
    prompt_tokens = sum(len(s.prompt) for s in subs if s.index % body.n == 0)
    completion_tokens = sum(len(c.tokens) for c in choices.values())
    out = [_choice_json(c, body, chat) for c in sorted(choices.values(), key=lambda c: c.index)]
    return {**meta, "object": "chat.completion" if chat else "text_completion",
            "choices": out,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def _finish_reason(c: Choice) -> str | None:
    return {"abort": "abort", "error": "error"}.get(c.finish_reason, c.finish_reason)


def _choice_json(c: Choice, body: Any, chat: bool) -> dict:
    if chat:
        out: dict[str, Any] = {"index": c.index,
                               "message": {"role": "assistant", "content": c.text},
                               "finish_reason": _finish_reason(c), "logprobs": None}
        if body.logprobs:
            lp = c.logprobs_json(echo=False)
            out["logprobs"] = {"content": [
                {"token": t, "logprob": v, "top_logprobs": [
                    {"token": k, "logprob": x} for k, x in (top or {}).items()]}
                for t, v, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"],
                                     strict=True)]}
        return out
    echo = bool(getattr(body, "echo", False))
    return {"index": c.index, "text": c.prefix + c.text,
            "logprobs": c.logprobs_json(echo) if body.logprobs is not None else None,
            "finish_reason": _finish_reason(c)}


async def _stream(state: ServerState, request: Request, body: Any, subs: list[_Sub],
                  choices: dict[int, Choice], meta: dict, chat: bool) -> AsyncIterator[str]:
    kind = "chat.completion.chunk" if chat else "text_completion"
    started: set[int] = set()
    sent_lp = dict.fromkeys(choices, 0)

    def chunk(c: Choice, text: str) -> str:
        if chat:
            delta: dict[str, Any] = {"content": text}
            if c.index not in started:
                delta["role"] = "assistant"
            ch: dict[str, Any] = {"index": c.index, "delta": delta,
                                  "finish_reason": _finish_reason(c) if c.finished else None}
        else:
            if c.index not in started:
                text = c.prefix + text
            ch = {"index": c.index, "text": text, "logprobs": None,
                  "finish_reason": _finish_reason(c) if c.finished else None}
            if body.logprobs is not None:
                echo = bool(body.echo) and c.index not in started
                ch["logprobs"] = c.logprobs_json(echo, tokens_from=sent_lp[c.index])
                sent_lp[c.index] = len(c.logprobs)
        started.add(c.index)
        return "data: " + json.dumps({**meta, "object": kind, "choices": [ch]}) + "\n\n"

    try:
        async for index, ev in _events(state, request, subs, choices):
            c = choices[index]
            c.add(ev)
            if c.finish_reason == "error":
                yield "data: " + json.dumps(error_body(
                    f"the model failed on choice {index}: {c.error}", "server_error")) + "\n\n"
                continue
            text = c.delta()
            if text or c.finished or (body.logprobs is not None and ev.tokens):
                yield chunk(c, text)
    except ApiError as exc:
        yield "data: " + json.dumps(exc.body()) + "\n\n"
    yield "data: [DONE]\n\n"
