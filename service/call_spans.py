"""The queue wait and model calls of a request as spans of its trace: the service core records them without
knowing whether tracing is on (a disabled tracer records nothing; service/tracing.py turns it on)."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry import trace

DISABLED = trace.NoOpTracer()


@dataclass(frozen=True)
class ModelCall:
    """When one merged model call ran (awaited by the batcher's worker), as span attributes and times (ns since
    epoch)."""

    kind: str
    model: str
    batch_size: int  # samples or images in the call, over all requests merged into it
    requests: int
    nfe: int
    started_ns: int
    ended_ns: int


def record_calls(tracer: trace.Tracer, submitted_ns: int, calls: list[ModelCall]) -> None:
    """The queue wait before each part of a request and the model call that ran it, as child spans of the
    current one. Recorded afterwards with their real times: the calls ran on another thread, merged with
    other requests, and each request's trace shows the call it shared."""
    waited_since = submitted_ns
    for call in calls:
        wait = tracer.start_span("queue wait", start_time=waited_since)
        wait.end(end_time=call.started_ns)
        span = tracer.start_span(
            "model call",
            start_time=call.started_ns,
            attributes={
                "latent_cnf.kind": call.kind,
                "latent_cnf.model": call.model,
                "latent_cnf.batch_size": call.batch_size,
                "latent_cnf.batch_requests": call.requests,
                "latent_cnf.nfe": call.nfe,
            },
        )
        span.end(end_time=call.ended_ns)
        waited_since = call.ended_ns
