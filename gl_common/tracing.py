"""The tracer provider both services build: `service.name` set, OTLP/HTTP export only when configured.

Called by the orchestrator's service (`orchestrator_core.service`) and the watchdog's composition root
(`watchdog.assembly`), each with its own provider (never the global one). Tests pass their own
exporter (the SDK's `InMemorySpanExporter`), attached with a simple (synchronous) processor.
"""

from __future__ import annotations

from typing import Final

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter

OTLP_TIMEOUT_SECONDS: Final = 10.0


def build_tracer_provider(
    otlp_endpoint: str | None, *, exporter: SpanExporter | None = None, service_name: str
) -> TracerProvider:
    """A provider with `service.name` set; OTLP export only when `otlp_endpoint` is given."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if otlp_endpoint:
        endpoint = otlp_endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=OTLP_TIMEOUT_SECONDS))
        )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider
