"""Request bodies of the OpenAI-compatible API and their errors.

Errors follow OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with
``param`` naming the offending field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_LOGPROBS = 20


class ApiError(Exception):
    """An error answered to the client (status, message, the field at fault)."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = (
            status, message, param, kind, code)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _Sampling(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    ignore_eos: bool = False
    user: str | None = None


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: a prompt (text or token ids) or a batch of prompts."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    max_completion_tokens: int | None = None


class TokenizeRequest(BaseModel):
    """``POST /tokenize`` (the remote-tokenizer protocol lm-eval speaks)."""

    prompt: str
    add_special_tokens: bool = False


class DetokenizeRequest(BaseModel):
    tokens: list[int]


def check_sampling(req: _Sampling) -> None:
    """The semantic checks pydantic's types do not make; :class:`ApiError` naming the field."""
    if not req.temperature >= 0:
        raise ApiError(400, f"temperature must be >= 0, got {req.temperature}", "temperature")
    if not 0 < req.top_p <= 1:
        raise ApiError(400, f"top_p must be in (0, 1], got {req.top_p}", "top_p")
    if req.top_k is not None and req.top_k == 0 or (req.top_k or 0) < -1:
        raise ApiError(400, f"top_k must be a positive integer (or -1: no limit), got "
                       f"{req.top_k}", "top_k")
    if not 1 <= req.n <= 128:
        raise ApiError(400, f"n must be in [1, 128], got {req.n}", "n")
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    if len(stops) > 16 or any(s == "" for s in stops):
        raise ApiError(400, "stop must be at most 16 non-empty strings", "stop")
