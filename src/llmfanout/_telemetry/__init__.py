"""Telemetry: OpenTelemetry spans and metrics in the GenAI conventions; the OTLP setup."""
