"""OpenTelemetry traces, off unless LATENT_CNF_OTLP_ENDPOINT is set: a span per request (W3C traceparent
honoured, by the FastAPI instrumentation), and inside it the queue wait, each model call (service/call_spans.py)
and the encoding."""

from __future__ import annotations

from fastapi import FastAPI
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from .call_spans import DISABLED
from .settings import Settings

SCOPE = "latent_cnf.service"


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
