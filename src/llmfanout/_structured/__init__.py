"""Structured outputs: schemas (pydantic, JSON Schema, callables), their errors, re-ask turns."""
