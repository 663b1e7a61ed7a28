"""OpenTelemetry: the request's span continues the caller's W3C trace, and the queue wait, model call and
encoding are its children, with the call's batch size and NFE; no tracing unless configured."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.app import create_app
from service.settings import Settings

from .service_helpers import wait_ready
from .test_v2_protocol import DIGIT

TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with TestClient(create_app(Settings(models=["mnist-final-cond"]), tracer_provider=provider)) as client:
        wait_ready(client)
        yield client, exporter


def spans_of_request(exporter: InMemorySpanExporter, response) -> tuple[dict, list]:
    """The request's server span and the spans in its trace, by name."""
    assert response.status_code == 200, response.text
    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == int(TRACE_ID, 16)]
    server = next(s for s in spans if s.kind == trace.SpanKind.SERVER)
    return server, spans


def children(spans: list, parent, name: str) -> list:
    return [s for s in spans if s.name == name and s.parent is not None and s.parent.span_id == parent.context.span_id]


def test_v2_infer_spans_continue_the_callers_trace(traced):
    client, exporter = traced
    exporter.clear()
    body = {"inputs": [{"name": "N", "datatype": "INT32", "shape": [1], "data": [3]}]}
    response = client.post(
        "/v2/models/mnist-final-cond.generate/infer", json=body, headers={"traceparent": TRACEPARENT}
    )
    server, spans = spans_of_request(exporter, response)
    assert server.parent.span_id == int(PARENT_ID, 16) and server.parent.is_remote
    assert server.attributes["http.route"] == "/v2/models/{name}/infer"
    (wait,) = children(spans, server, "queue wait")
    (call,) = children(spans, server, "model call")
    assert len(children(spans, server, "encode")) == 1
    nfe = next(o["data"][0] for o in response.json()["outputs"] if o["name"] == "NFE")
    assert call.attributes["latent_cnf.batch_size"] == 3 and call.attributes["latent_cnf.nfe"] == nfe
    assert call.attributes["latent_cnf.kind"] == "generate" and call.attributes["latent_cnf.batch_requests"] == 1
    assert wait.end_time == call.start_time  # the wait ends as the call that ran the request starts


def test_native_score_has_a_model_call_span(traced):
    client, exporter = traced
    exporter.clear()
    files = {"file": (DIGIT.name, DIGIT.read_bytes())}
    response = client.post(
        "/score", files=files, data={"importance_samples": "4"}, headers={"traceparent": TRACEPARENT}
    )
    server, spans = spans_of_request(exporter, response)
    (call,) = children(spans, server, "model call")
    assert call.attributes["latent_cnf.kind"] == "score" and call.attributes["latent_cnf.batch_size"] == 1


@pytest.mark.parametrize("query", ["", "?format=png"])  # the shortcut beside FastAPI, and the FastAPI route
def test_native_generate_is_traced_whichever_way_it_is_answered(traced, query):
    client, exporter = traced
    exporter.clear()
    response = client.post(f"/generate{query}", json={"n": 2, "seed": 1}, headers={"traceparent": TRACEPARENT})
    server, spans = spans_of_request(exporter, response)
    assert server.parent.span_id == int(PARENT_ID, 16) and server.attributes["http.route"] == "/generate"
    (call,) = children(spans, server, "model call")
    assert call.attributes["latent_cnf.kind"] == "generate" and call.attributes["latent_cnf.batch_size"] == 2


def test_tracing_is_off_unless_configured():
    assert isinstance(create_app(Settings(models=[])).state.tracer, trace.NoOpTracer)
    configured = create_app(Settings(models=[], otlp_endpoint="http://127.0.0.1:9/v1/traces"))
    assert not isinstance(configured.state.tracer, trace.NoOpTracer)
