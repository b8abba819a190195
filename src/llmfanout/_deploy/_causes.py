"""Why a deployment refused a call, in the words a fallback chain is written in.

A fallback is chosen by *cause*, not by status code: the same "the prompt is too long"
comes back as OpenAI's ``context_length_exceeded``, Azure's ``context_length_exceeded``
code, Anthropic's "prompt is too long", or a 413. :func:`cause_of` reads the error's
status, type, message and body and names the cause, or None for an error no fallback
is for (those are retried, or fail the call, as usual).
"""

from __future__ import annotations

__all__ = ["CAUSES", "CONTENT_FILTER", "CONTEXT_WINDOW", "MODEL_NOT_FOUND", "cause_of"]

CONTEXT_WINDOW = "context_window"
CONTENT_FILTER = "content_filter"
MODEL_NOT_FOUND = "model_not_found"
CAUSES = (CONTEXT_WINDOW, CONTENT_FILTER, MODEL_NOT_FOUND)
"""The causes a deployment's ``fallback_for`` may name."""

_SIGNS = (
    (
        CONTEXT_WINDOW,
        (
            "context_length_exceeded",
            "maximum context length",
            "context window",
            "context_window",
            "prompt is too long",
            "input is too long",
            "too many tokens",
            "string_above_max_length",
        ),
    ),
    (
        CONTENT_FILTER,
        (
            "content_filter",
            "content_policy",
            "responsibleaipolicyviolation",
            "content management policy",
        ),
    ),
    (MODEL_NOT_FOUND, ("model_not_found", "deploymentnotfound", "does not exist")),
)


def cause_of(exc: BaseException) -> str | None:
    """The cause ``exc`` (a refused call) stands for, or None for any other failure."""
    status = getattr(exc, "status_code", None)
    if status not in (400, 403, 404, 413, 422):
        return None
    text = " ".join(
        str(part).lower()
        for part in (
            getattr(exc, "error_type", None),
            getattr(exc, "error_message", None),
            getattr(exc, "body", None),
        )
        if part
    )
    for cause, signs in _SIGNS:
        if any(sign in text for sign in signs):
            return cause
    if status == 413:
        return CONTEXT_WINDOW
    if status == 404:
        return MODEL_NOT_FOUND
    return None
