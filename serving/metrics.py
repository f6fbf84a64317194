"""Prometheus metrics of one server: requests by endpoint and status, tokens, time to first token,
how many sequences are decoded together and how many wait. Each app has its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STEP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "shaderbay_requests", "HTTP requests answered, by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter("shaderbay_prompt_tokens", "prompt tokens of the generations run", registry=r)
        self.completion_tokens = Counter("shaderbay_completion_tokens", "tokens generated", registry=r)
        self.time_to_first_token = Histogram(
            "shaderbay_time_to_first_token_seconds",
            "from a generation request's arrival to its first generated token",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.queue_length = Gauge("shaderbay_queue_length", "sequences waiting to be decoded", registry=r)
        self.running_sequences = Gauge(
            "shaderbay_running_sequences", "sequences in the engine's batch (their prompt or decode)", registry=r
        )
        self.step_tokens = Histogram(
            "shaderbay_step_tokens",
            "tokens one engine step produced: how many sequences were decoded together",
            buckets=_STEP_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountRequests:
    """ASGI middleware counting every HTTP response by route and status (streams included, at their start)."""

    def __init__(self, app, metrics: Metrics, endpoints: frozenset[str]):
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
