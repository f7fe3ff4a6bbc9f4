"""Per-request observation: request id, timings, tokens -> one access-log line and the
Prometheus metrics. Streams report at their end, not when the headers go out."""
from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..engine import EngineNotFoundError, EngineRegistry, Usage

access_log = logging.getLogger("kolosal.access")
UNMATCHED_ROUTE = "unmatched"   # endpoint label of requests no route matched (404/405)
OTHER_MODEL = "other"           # model label of names that are not a known engine
NO_MODEL = "-"
LOGGED_TEXT_LIMIT = 256         # characters of a client-chosen path/model kept in the log

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


class Metrics:
    """All metrics on one CollectorRegistry owned by the app (no process globals)."""

    def __init__(self, engines: EngineRegistry) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("kolosal_requests", "HTTP requests by endpoint, model and status",
                                ["endpoint", "model", "status"], registry=self.registry)
        self.prompt_tokens = Counter("kolosal_prompt_tokens", "Prompt tokens processed", ["model"],
                                     registry=self.registry)
        self.generated_tokens = Counter("kolosal_generated_tokens", "Tokens generated", ["model"],
                                        registry=self.registry)
        self.ttft = Histogram("kolosal_time_to_first_token_seconds", "Time to first token",
                              ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inter_token = Histogram("kolosal_inter_token_latency_seconds",
                                     "Mean gap between generated tokens of a request", ["model"],
                                     buckets=TOKEN_GAP_BUCKETS, registry=self.registry)
        self.duration = Histogram("kolosal_request_duration_seconds", "End-to-end request latency",
                                  ["endpoint", "model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        # per API key (its configured name: a bounded set); anonymous requests are not counted
        self.key_requests = Counter("kolosal_key_requests", "HTTP requests by API key and status",
                                    ["key", "status"], registry=self.registry)
        self.key_tokens = Counter("kolosal_key_tokens", "Tokens by API key (prompt or completion)",
                                  ["key", "kind"], registry=self.registry)
        self.engines = engines
        self.registry.register(EngineCollector(engines))
        self.registry.register(VllmCollector(engines))
        ProcessCollector(registry=self.registry)  # RSS, CPU, open fds
        self.registry.register(EventLoopCollector())

    def model_label(self, model: str) -> str:
        """Label values must come from a bounded set: a known engine id, else one value.
        (Client-chosen names would grow /metrics without limit.)"""
        if not model:
            return NO_MODEL
        try:
            self.engines.get(model)
        except EngineNotFoundError:
            return OTHER_MODEL
        return model


class EngineCollector(Collector):
    """Engine gauges read from each engine's lock-free stats snapshot at scrape time."""

    GAUGES = (("running_requests", "slots_busy", "Requests decoding or prefilling"),
              ("waiting_requests", "queue_depth", "Requests waiting for a slot"),
              ("slots_busy", "slots_busy", "Busy KV slots"),
              ("slots_total", "slots_total", "KV slots"),
              ("kv_cells_used", "kv_cells_used", "KV cache cells in use (running + cached prefixes)"),
              ("kv_cells_total", "kv_cells_total", "KV cache cells"),
              ("decode_tokens_per_second", "decode_tokens_per_s", "Decode throughput (5 s window)"),
              ("prefill_tokens_per_second", "prefill_tokens_per_s", "Prefill throughput (5 s window)"))

    def __init__(self, engines: EngineRegistry) -> None:
        self.engines = engines

    def collect(self) -> Iterator[Metric]:
        families = {name: GaugeMetricFamily(f"kolosal_{name}", doc, labels=["model"])
                    for name, _, doc in self.GAUGES}
        load = GaugeMetricFamily("kolosal_engine_load_seconds", "Time the engine took to load",
                                 labels=["model"])
        for engine in self.engines.list():
            stats = engine.stats()
            for name, key, _ in self.GAUGES:
                if key in stats:
                    families[name].add_metric([engine.engine_id], float(stats[key]))
            load.add_metric([engine.engine_id], engine.load_seconds)
        yield from families.values()
        yield load


class VllmCollector(Collector):
    """vLLM's metric names, so inference gateways score replicas with no extra config: the
    Gateway API Inference Extension's endpoint picker reads vllm:num_requests_waiting,
    vllm:num_requests_running and vllm:kv_cache_usage_perc by default; llm-d and vLLM
    dashboards add the prefix-cache counters (tokens)."""

    def __init__(self, engines: EngineRegistry) -> None:
        self.engines = engines

    def collect(self) -> Iterator[Metric]:
        labels = ["model_name"]
        waiting = GaugeMetricFamily("vllm:num_requests_waiting", "Requests waiting for a slot",
                                    labels=labels)
        running = GaugeMetricFamily("vllm:num_requests_running", "Requests prefilling or decoding",
                                    labels=labels)
        kv_usage = GaugeMetricFamily(
            "vllm:kv_cache_usage_perc",
            "KV cache usage, 0-1: cells held by running requests (prefix caches of finished "
            "requests are evictable, so they count as free)", labels=labels)
        queries = CounterMetricFamily("vllm:prefix_cache_queries",
                                      "Prompt tokens looked up in the prefix cache", labels=labels)
        hits = CounterMetricFamily("vllm:prefix_cache_hits",
                                   "Prompt tokens served from the prefix cache", labels=labels)
        for engine in self.engines.list():
            stats = engine.stats()
            if not stats:  # not loaded
                continue
            name = [engine.engine_id]
            waiting.add_metric(name, stats["queue_depth"])
            running.add_metric(name, stats["slots_busy"])
            if "kv_cells_total" not in stats:  # an embedding engine: no KV cache to report
                continue
            held = stats["kv_cells_used"] - stats["kv_cells_cached"]
            kv_usage.add_metric(name, min(1.0, max(0.0, held / max(1, stats["kv_cells_total"]))))
            queries.add_metric(name, stats["prefix_cache_queries"])
            hits.add_metric(name, stats["prefix_cache_hits"])
        yield from (waiting, running, kv_usage, queries, hits)


class EventLoopCollector(Collector):
    """Tasks on the event loop and threads in the process: a leak shows as growth at rest."""

    def collect(self) -> Iterator[Metric]:
        tasks = GaugeMetricFamily("kolosal_event_loop_tasks", "asyncio tasks alive on the server loop")
        try:
            tasks.add_metric([], len(asyncio.all_tasks()))
        except RuntimeError:  # scraped off the loop (never in the server)
            pass
        yield tasks
        yield GaugeMetricFamily("kolosal_threads", "Threads in the server process",
                                value=threading.active_count())


@dataclass(slots=True)
class RequestRecord:
    metrics: Metrics
    request_id: str
    method: str
    path: str
    route: str = UNMATCHED_ROUTE   # the matched route's template: a bounded label
    quiet: bool = False            # a probe or scrape: logged at DEBUG unless it failed
    started: float = field(default_factory=time.perf_counter)
    model: str = ""
    status: int = 0
    first_token_at: float = 0.0
    usage: Usage | None = None
    finished: bool = False
    prompt: str | None = None   # set only when the operator asked for --log-prompts
    key: str = ""               # the API key's name (never the key); "" anonymous

    def token(self) -> None:
        if not self.first_token_at:
            self.first_token_at = time.perf_counter()

    def finish(self, status: int, usage: Usage | None = None) -> None:
        """Record once: metrics and the access-log line."""
        if self.finished:
            return
        self.finished = True
        self.status = status
        self.usage = usage or self.usage
        duration = time.perf_counter() - self.started
        ttft = self.first_token_at - self.started if self.first_token_at else None
        self._count(status, duration, ttft)
        self._log(status, duration, ttft)

    def _count(self, status: int, duration: float, ttft: float | None) -> None:
        metrics = self.metrics
        model = metrics.model_label(self.model)
        metrics.requests.labels(self.route, model, str(status)).inc()
        metrics.duration.labels(self.route, model).observe(duration)
        if self.key:
            metrics.key_requests.labels(self.key, str(status)).inc()
        if self.usage is None:
            return
        if self.key:
            metrics.key_tokens.labels(self.key, "prompt").inc(self.usage.prompt_tokens)
            metrics.key_tokens.labels(self.key, "completion").inc(self.usage.completion_tokens)
        metrics.prompt_tokens.labels(model).inc(self.usage.prompt_tokens)
        metrics.generated_tokens.labels(model).inc(self.usage.completion_tokens)
        if ttft is not None:
            metrics.ttft.labels(model).observe(ttft)
            if self.usage.completion_tokens > 1:
                gap = (duration - ttft) / (self.usage.completion_tokens - 1)
                metrics.inter_token.labels(model).observe(gap)

    def _log(self, status: int, duration: float, ttft: float | None) -> None:
        quiet = self.quiet and status < 400
        access_log.log(  # the formatter escapes control characters in every field
            logging.DEBUG if quiet else logging.INFO, "%s %s %d", self.method, clip(self.path), status,
            extra={"request_id": self.request_id, "status": status,
                   "model": clip(self.model) if self.model else NO_MODEL,
                   "duration_ms": round(duration * 1000, 1),
                   "ttft_ms": round(ttft * 1000, 1) if ttft is not None else None,
                   "prompt_tokens": self.usage.prompt_tokens if self.usage else None,
                   "completion_tokens": self.usage.completion_tokens if self.usage else None,
                   "key": self.key or None, "prompt": self.prompt})


def clip(text: str, limit: int = LOGGED_TEXT_LIMIT) -> str:
    """A client-chosen string, cut to a sane length for one log line."""
    return text if len(text) <= limit else f"{text[:limit]}...(+{len(text) - limit} chars)"


def new_request_id(supplied: str | None) -> str:
    """Echo a sane client-supplied X-Request-Id, else make one."""
    if supplied and len(supplied) <= 128 and supplied.isprintable():
        return supplied
    return "req_" + secrets.token_hex(12)
