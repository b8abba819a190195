"""Public names carry their public module, as trio's and httpcore's do.

A class or function defined in a private module (``llmfanout._core._executor``) and
re-exported by a public one (``llmfanout``) gets the public module as its ``__module__``,
so reprs, tracebacks, docs and pickles name the path a user imports, and moving the
private module later breaks no one's pickle. The first public module to claim a name
keeps it: ``llmfanout`` imports ``llmfanout.providers`` before it claims its own names,
so ``OpenAIProvider`` is ``llmfanout.providers.OpenAIProvider`` wherever it is reached.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def publish(module: str, namespace: Mapping[str, object], names: Iterable[str]) -> None:
    """Set ``__module__`` to ``module`` on each of ``names`` still named for a private module."""
    for name in names:
        value = namespace[name]
        current = getattr(value, "__module__", None)
        if isinstance(current, str) and _private(current) and isinstance(value, type | _Function):
            value.__module__ = module


def _private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


def _function() -> None:  # pragma: no cover - only its type is used
    pass


_Function = type(_function)
