"""What ``GET /metrics`` reports, in Prometheus's text format (prometheus_client).

Each server has its own registry, so two servers in one process (a notebook, the tests) never
mix their counts. Throughput is also given as a gauge over the last ten seconds, for people
reading the page by eye; Prometheus itself derives rates from the counters.
"""

from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

THROUGHPUT_WINDOW_S = 10.0
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    def __init__(self, model: str, running_capacity: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "nbkit_requests", "HTTP requests answered, by endpoint and status", ["endpoint", "status"], registry=registry
        )
        self.prompt_tokens = Counter("nbkit_prompt_tokens", "Prompt tokens processed", registry=registry)
        self.generated_tokens = Counter("nbkit_generated_tokens", "Tokens generated", registry=registry)
        self.running = Gauge("nbkit_requests_running", "Requests the model is generating for", registry=registry)
        self.waiting = Gauge("nbkit_requests_waiting", "Requests queued for a place (queue depth)", registry=registry)
        self.capacity = Gauge("nbkit_max_running", "Requests the engine generates for at once", registry=registry)
        self.capacity.set(running_capacity)
        self.ttft = Histogram(
            "nbkit_time_to_first_token_seconds",
            "From a request's arrival to its first generated text (queueing included)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "nbkit_request_duration_seconds", "From arrival to the last token", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.throughput = Gauge(
            "nbkit_generated_tokens_per_second",
            f"Tokens generated per second over the last {THROUGHPUT_WINDOW_S:.0f} s",
            registry=registry,
        )
        self.throughput.set_function(self._recent_rate)
        Gauge("nbkit_model_info", "The model served", ["model"], registry=registry).labels(model).set(1)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def tokens_generated(self, count: int) -> None:
        if count <= 0:
            return
        self.generated_tokens.inc(count)
        with self._lock:
            self._recent.append((time.monotonic(), count))

    def _recent_rate(self) -> float:
        cutoff = time.monotonic() - THROUGHPUT_WINDOW_S
        with self._lock:
            while self._recent and self._recent[0][0] < cutoff:
                self._recent.popleft()
            return sum(count for _, count in self._recent) / THROUGHPUT_WINDOW_S

    def page(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["ServerMetrics"]
