"""Prometheus metrics of a serving process (``GET /metrics``), in a registry of their own."""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0)


class ServeMetrics:
    """Request counts, cache occupancy, throughput and latency histograms."""

    def __init__(self, pages_total: int, window_s: float = 10.0) -> None:
        self.registry = r = CollectorRegistry()
        self.running = Gauge("mlra_requests_running", "Requests holding cache pages", registry=r)
        self.waiting = Gauge("mlra_requests_waiting", "Requests queued for admission",
                             registry=r)
        self.pages_used = Gauge("mlra_cache_pages_used", "KV cache pages in use", registry=r)
        self.pages_total = Gauge("mlra_cache_pages_total", "KV cache pages", registry=r)
        self.pages_total.set(pages_total)
        self.tokens_per_s = Gauge("mlra_generation_tokens_per_second",
                                  f"Tokens generated per second over the last {window_s:g} s",
                                  registry=r)
        self.generated = Counter("mlra_generation_tokens", "Tokens generated", registry=r)
        self.prompt_tokens = Counter("mlra_prompt_tokens", "Prompt tokens received", registry=r)
        self.requests = Counter("mlra_requests", "Finished requests", ["finish_reason"],
                                registry=r)
        self.preemptions = Gauge("mlra_preemptions", "Sequences preempted so far", registry=r)
        self.ttft = Histogram("mlra_time_to_first_token_seconds", "Time to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("mlra_inter_token_latency_seconds", "Time between tokens",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("mlra_request_latency_seconds", "Request latency",
                             buckets=LATENCY_BUCKETS, registry=r)
        self._window = window_s
        self._recent: deque[tuple[float, int]] = deque()

    def step(self, running: int, waiting: int, pages_used: int, preemptions: int,
             new_tokens: int) -> None:
        """Record the state after one engine step."""
        now = time.monotonic()
        self.running.set(running)
        self.waiting.set(waiting)
        self.pages_used.set(pages_used)
        self.preemptions.set(preemptions)
        self.generated.inc(new_tokens)
        self._recent.append((now, new_tokens))
        while self._recent and self._recent[0][0] < now - self._window:
            self._recent.popleft()
        span = max(now - self._recent[0][0], 1e-3) if len(self._recent) > 1 else self._window
        self.tokens_per_s.set(sum(n for _, n in self._recent) / span)

    def render(self) -> bytes:
        return generate_latest(self.registry)
