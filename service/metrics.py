"""Prometheus collectors (prefix latent_cnf_), registered once per process in the default registry."""

from __future__ import annotations

import contextlib
from typing import Literal, get_args

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
NFE_BUCKETS = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

REQUESTS = Counter(
    "latent_cnf_requests", "HTTP requests by endpoint, method and status", ["endpoint", "method", "status"]
)
REQUEST_SECONDS = Histogram(
    "latent_cnf_request_duration_seconds", "HTTP request duration by endpoint", ["endpoint"], buckets=LATENCY_BUCKETS
)
QUEUE_DEPTH = Gauge("latent_cnf_queue_depth", "requests waiting for a model call", ["device"])
QUEUE_WAIT_BUCKETS = (0.0005, 0.001, 0.0025, *LATENCY_BUCKETS)
QUEUE_WAIT_SECONDS = Histogram(
    "latent_cnf_queue_wait_seconds",
    "time a request's part waited before its model call started (behind other calls, or for company)",
    ["device"],
    buckets=QUEUE_WAIT_BUCKETS,
)
BATCH_SIZE = Histogram(
    "latent_cnf_batch_size",
    "samples or images per merged model call",
    ["model", "version", "kind"],
    buckets=BATCH_BUCKETS,
)
BATCH_REQUESTS = Histogram(
    "latent_cnf_batch_requests",
    "requests merged into one model call",
    ["model", "version", "kind"],
    buckets=BATCH_BUCKETS,
)
INFERENCE_SECONDS = Histogram(
    "latent_cnf_inference_seconds",
    "time of one merged model call where it runs (the model process)",
    ["model", "version", "kind"],
    buckets=LATENCY_BUCKETS,
)
CALL_ROUND_TRIP_SECONDS = Histogram(
    "latent_cnf_call_round_trip_seconds",
    "one merged model call as the batcher awaits it: the call, its transfers and the wake-ups between",
    ["model", "version", "kind"],
    buckets=LATENCY_BUCKETS,
)
NFE = Histogram(
    "latent_cnf_nfe", "ODE function evaluations per model call", ["model", "version", "kind"], buckets=NFE_BUCKETS
)
SAMPLES = Counter("latent_cnf_samples_generated", "samples generated", ["model", "version"])
IMAGES_SCORED = Counter("latent_cnf_images_scored", "images scored", ["model", "version"])
REJECTED = Counter("latent_cnf_rejected", "requests refused, by reason", ["reason"])
CONNECTIONS_CLOSED = Counter(
    "latent_cnf_connections_closed",
    "connections the server closed on its own (service/connections.py), by reason",
    ["reason"],
)
# header_timeout: no complete request head in time (idle, or dripping one); body_timeout: the body did not
# arrive in time (a 408 unless an answer was started); send_timeout: the client did not read its answer;
# evicted: closed at the cap for a new one; too_many_connections: refused at the cap with a 503 (also counted
# in latent_cnf_rejected_total, so this family alone shows every connection the limits close); linger_limit: a
# body answered early whose rest passed the most the server reads only to drop.
CloseReason = Literal[
    "header_timeout", "body_timeout", "send_timeout", "evicted", "too_many_connections", "linger_limit"
]
ABANDONED = Counter(
    "latent_cnf_abandoned",
    "requests dropped before they ran, or between their parts: their client had gone or timed out",
)
MODEL_INFO = Gauge(
    "latent_cnf_model_info", "served model versions (value 1)", ["model", "version", "device", "checkpoint_sha256"]
)
READY = Gauge("latent_cnf_ready", "1 once every checkpoint was tried and the default model is served")
MODEL_LOAD_FAILED = Gauge("latent_cnf_model_load_failed", "checkpoints that could not be served (value 1)", ["model"])


CALL_FAMILIES = (BATCH_SIZE, BATCH_REQUESTS, INFERENCE_SECONDS, CALL_ROUND_TRIP_SECONDS, NFE)
KINDS = ("generate", "trajectory", "score", "complete")


def forget_model_version(model: str, version: str, device: str, sha256: str) -> None:
    """Drop an unloaded version's series, so the label sets stay those of loaded versions."""
    series = [(MODEL_INFO, (model, version, device, sha256)), (SAMPLES, (model, version))]
    series += [(IMAGES_SCORED, (model, version))]
    series += [(family, (model, version, kind)) for family in CALL_FAMILIES for kind in KINDS]
    for family, labels in series:
        with contextlib.suppress(KeyError):  # a series never observed was never made
            family.remove(*labels)


def connection_closed(reason: CloseReason) -> None:
    """Count a connection the server closed; the Literal keeps the label set to the series created below."""
    CONNECTIONS_CLOSED.labels(reason=reason).inc()


for _reason in get_args(CloseReason):  # every series exists from the start at 0, so rate() and alerts see them
    CONNECTIONS_CLOSED.labels(reason=_reason)
