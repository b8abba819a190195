"""``llmfanout run --otel``: the OpenTelemetry SDK with OTLP exporters, set up from ``OTEL_*``.

The exporters read the standard variables themselves (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_EXPORTER_OTLP_PROTOCOL``...), and the resource
reads ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (``service.name`` defaults
to ``llmfanout``). ``http/protobuf`` is the default protocol, as the specification says;
``grpc`` needs ``opentelemetry-exporter-otlp-proto-grpc``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

INSTALL = "pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http"


_OTLP = "opentelemetry.exporter.otlp.proto"


class SetupError(RuntimeError):
    """--otel cannot start: a package is missing. The message says what to install."""


def configure_otlp() -> Callable[[], None]:
    """Install global tracer and meter providers exporting over OTLP; return the function
    that flushes and shuts them down (call it when the run ends)."""
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise SetupError(
            f"--otel needs the OpenTelemetry SDK ({exc.name} is missing); install it with: "
            f"{INSTALL}"
        ) from None
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    package = "grpc" if protocol == "grpc" else "http"
    try:
        spans = importlib.import_module(
            f"opentelemetry.exporter.otlp.proto.{package}.trace_exporter"
        )
        points = importlib.import_module(
            f"opentelemetry.exporter.otlp.proto.{package}.metric_exporter"
        )
    except ImportError as exc:
        raise SetupError(
            f"--otel needs the OTLP exporter ({exc.name} is missing); install it with: "
            f"pip install opentelemetry-exporter-otlp-proto-{package}"
        ) from None
    resource = Resource.create({"service.name": "llmfanout"}).merge(OTELResourceDetector().detect())
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(spans.OTLPSpanExporter()))
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=[PeriodicExportingMetricReader(points.OTLPMetricExporter())],
    )
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)

    def shutdown() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown()

    return shutdown
