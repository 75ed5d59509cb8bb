"""Prometheus metrics of one server (its own registry) and the ASGI middleware that records requests."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ENDPOINTS = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/score", "/health", "/metrics",
             "/tokenizer_info", "/tokenize", "/detokenize")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # prompts per sampler call

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Request counts by endpoint and status, latency, tokens, and the size of each sampler batch."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dgalign_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dgalign_request_latency_seconds",
            "Request latency, to the last byte of the response",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "dgalign_prompt_tokens", "Prompt tokens received", registry=self.registry
        )
        self.generated_tokens = Counter(
            "dgalign_generated_tokens",
            "Completion tokens returned, by method",
            ["method"],
            registry=self.registry,
        )
        self.batch_prompts = Histogram(
            "dgalign_batch_prompts",
            "Prompts per sampler call (micro-batching)",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Count every HTTP request and time it until its last body chunk (so streams are timed whole)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        start = time.perf_counter()
        status = 500  # unless a response starts

        async def record(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.metrics.requests.labels(endpoint, str(status)).inc()
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

        await self.app(scope, receive, record)
