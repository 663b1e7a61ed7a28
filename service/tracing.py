"""OpenTelemetry traces, off unless LATENT_CNF_OTLP_ENDPOINT is set: a span per request (W3C traceparent
honoured, by the FastAPI instrumentation), and inside it the queue wait, each model call and the encoding."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from .settings import Settings

SCOPE = "latent_cnf.service"
DISABLED = trace.NoOpTracer()


@dataclass(frozen=True)
class ModelCall:
    """When one merged model call ran (on the inference thread), as span attributes and times (ns since epoch)."""

    kind: str
    model: str
    batch_size: int  # samples or images in the call, over all requests merged into it
    requests: int
    nfe: int
    started_ns: int
    ended_ns: int


def otlp_provider(endpoint: str) -> TracerProvider:
    """Spans batched to an OTLP/HTTP collector."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "latent-cnf"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def instrument(app: FastAPI, settings: Settings, provider: TracerProvider | None) -> None:
    """Trace requests with `provider`, or to the configured OTLP endpoint; leave the app untouched otherwise.
    The tracer goes to app.state.tracer, for the spans the lifespan's ModelHub and the routes add."""
    if provider is None and settings.otlp_endpoint:
        provider = otlp_provider(settings.otlp_endpoint)
    if provider is None:
        app.state.tracer = DISABLED
        return
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls="healthz,readyz,metrics,v2/health")
    app.state.tracer = provider.get_tracer(SCOPE)


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
