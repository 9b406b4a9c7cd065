"""Serving: the continuous-batching :class:`Engine` over one paged KV cache, and the
OpenAI-compatible HTTP server of ``mlra serve`` (:mod:`mlra.serve.app`, extra ``serve``)."""

from mlra.serve.engine import Engine, SamplingParams, StepOutput, TokenLogprob

__all__ = ["Engine", "SamplingParams", "StepOutput", "TokenLogprob"]
