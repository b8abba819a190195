"""What a row job is: :class:`JobSpec` (one field per ``llmfanout run`` flag), its checks,
and where its key comes from (:func:`read_key`) and how it is kept out of text
(:func:`scrubber`). Running one is :mod:`._job`.
"""

from __future__ import annotations

import json
import math
import os
import urllib.parse
from collections.abc import (
    Callable,
    Mapping,
)
from typing import Any

import attrs

from .._base._checks import env_key
from .._deploy._latency import parse_quantile
from .._deploy._spec import DeploymentSpec, parse_deployments
from .._flow._redislimit import redact
from .._report._cost import Price, check_prices
from .._structured._spec import DEFAULT_MAX_REASKS
from ._structured_rows import check_job_schema

PROVIDERS = ("echo", "openai", "anthropic", "gemini")
BACKENDS = ("asyncio", "trio")
KEY_VARIABLES = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
}
FALLBACK_KEY_VARIABLES = {"gemini": "GOOGLE_API_KEY"}  # read when the first is unset


class JobError(ValueError):
    """A job that cannot start: a missing key, an unusable option. Nothing was sent."""


def _whole(
    name: str, *, none: bool = False, zero: bool = False
) -> Callable[[Any, Any, object], None]:
    least = 0 if zero else 1

    def check(instance: Any, attribute: Any, value: object) -> None:
        if value is None and none:
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            wanted = f"a whole number >= {least}" + (", or None" if none else "")
            raise ValueError(f"JobSpec: {name} is {value!r}; give {wanted}")

    return check


def _seconds(name: str, *, zero: bool = False) -> Callable[[Any, Any, object], None]:
    def check(instance: Any, attribute: Any, value: object) -> None:
        if value is None and not zero:
            return
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not (value >= 0 if zero else value > 0)
            or not math.isfinite(value)
        ):
            wanted = "a number >= 0" if zero else "a number > 0, or None"
            raise ValueError(f"JobSpec: {name} is {value!r}; give {wanted}")

    return check


def _hedge_after(instance: Any, attribute: Any, value: object) -> None:
    if isinstance(value, str) and parse_quantile(value) is not None:
        return
    if isinstance(value, str):
        raise ValueError(
            f"JobSpec: hedge_after is {value!r}; give seconds > 0, a latency quantile such "
            "as 'p95' (from 'p1' to 'p99.9'), or None"
        )
    _seconds("hedge_after")(instance, attribute, value)


def _one_of(name: str, choices: tuple[str, ...]) -> Callable[[Any, Any, object], None]:
    def check(instance: Any, attribute: Any, value: object) -> None:
        if value not in choices:
            raise ValueError(f"JobSpec: {name} is {value!r}; give one of {', '.join(choices)}")

    return check


def _text(name: str) -> Callable[[Any, Any, object], None]:
    def check(instance: Any, attribute: Any, value: object) -> None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"JobSpec: {name} is {value!r}; give a non-empty string, or None")

    return check


def _params(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValueError(
            f"JobSpec: params is {type(value).__name__}; give a mapping of parameter names "
            "to values (temperature, max_tokens, ...), or None"
        )
    return dict(value) or None


def _prices(value: object) -> dict[str, Price] | None:
    return None if value is None else check_prices(value, "JobSpec.prices")


def _place(value: object) -> object:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _shown_place(value: str | None) -> str:
    return repr(redact(value) if value and "://" in value else value)


def _deployments(value: object) -> tuple[DeploymentSpec, ...] | None:
    if value is None:
        return None
    if isinstance(value, tuple) and all(isinstance(v, DeploymentSpec) for v in value) and value:
        return value
    try:
        return parse_deployments(value, "JobSpec.deployments")
    except ValueError as exc:
        raise ValueError(str(exc)) from None


@attrs.frozen(kw_only=True)
class JobSpec:
    """What a batch job does: one field per ``llmfanout run`` flag. Frozen and picklable.

    - ``provider``: ``"echo"`` (local, no network), ``"openai"``, ``"anthropic"`` or
      ``"gemini"``.
    - ``model``: the model; a row's own (``params.model``) wins. Without it, every row
      of an HTTP provider must name one (rows that do not become failed rows).
    - ``base_url``: the provider's API base URL (an OpenAI-compatible server, a proxy).
    - ``api_key_env``: the name of the environment variable holding the key (default
      ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``). The key is read where the job runs and
      is never stored in the spec.
    - ``params``: default request parameters, under each row's own.
    - ``concurrency``: calls in flight at once; ``max_attempts``: attempts per row;
      ``timeout``: seconds per attempt (None: the provider's default).
    - ``rpm``, ``tpm``: requests and tokens per minute; ``shared_limit``: a URL
      (``redis://host:port/db``) of a budget shared by every worker, with ``rpm``/``tpm``.
    - ``patience``: seconds a row keeps waiting out rate-limit and overload answers (429,
      529, 503 with Retry-After) before it fails, apart from ``max_attempts``; 0: no
      patience (such an answer is an attempt like any other).
    - ``pacing``: pace by the rate limits the server advertises in its headers (False:
      ignore those headers; ``rpm``/``tpm`` still apply).
    - ``adaptive``: keep fewer calls in flight while the server answers overload (429,
      503, 529) with no limits advertised, back up as it recovers (False: ``concurrency``
      calls stay in flight whatever it answers). Independent of ``pacing``.
    - ``max_errors``: stop after this many failed rows (None: never); rows not sent then
      come out as failed with ``TaskAborted``. An answer refusing the key (401, 403) always
      stops the run.
    - ``backend``: the event loop :func:`run_rows` starts (``"asyncio"`` or ``"trio"``).
    - ``echo_latency``: seconds the echo provider waits per call (demos, benchmarks).
    - ``prices``: a price table (model -> :class:`~llmfanout.Price` or its mapping), for
      the summary's ``cost_usd``.
    - ``cache``: where answers are cached: the path of a SQLite file, or a Redis URL
      (``redis://host:port/db``) shared by every worker; each output row then says
      whether it was ``cached``. ``cache_namespace`` is mixed into every key: a new one
      starts afresh. See docs/cache.md.
    - ``telemetry``: OpenTelemetry spans and metrics (``ParallelLLMExecutor(telemetry=True)``,
      with ``llmfanout.client.cost`` from ``prices``); ``capture_content``: record the
      messages and answers on the spans too (needs ``telemetry``).
    - ``deployments``: a list of deployments (the objects of a deployments file) to send
      to as one :class:`~llmfanout.Pool` instead of ``provider``; each names its key's
      environment variable. With ``shared_limit``, each one's ``rpm``/``tpm`` budget is
      its own key in Redis. ``hedge_after``: the pool's (seconds, or a latency quantile
      such as ``"p95"``; None: no hedging).
    - ``schema``: a JSON Schema every answer must match (a row's ``params`` may carry its
      own as ``response_schema``); output rows then carry ``parsed``, the validated
      object. ``max_reasks``: follow-up turns for an answer that fails it (default 2).
    - ``max_cost_usd``: stop sending once the spend (and the cost in flight) would pass
      this many USD; needs ``prices``. Rows not sent come out with ``TaskAborted``.

    Raises ``ValueError`` naming the field for a value that cannot work.
    """

    provider: str = attrs.field(default="echo", validator=_one_of("provider", PROVIDERS))
    model: str | None = attrs.field(default=None, validator=_text("model"))
    base_url: str | None = attrs.field(default=None, validator=_text("base_url"))
    api_key_env: str | None = attrs.field(default=None, validator=_text("api_key_env"))
    params: dict[str, Any] | None = attrs.field(default=None, converter=_params)
    concurrency: int = attrs.field(default=16, validator=_whole("concurrency"))
    max_attempts: int = attrs.field(default=3, validator=_whole("max_attempts"))
    timeout: float | None = attrs.field(default=None, validator=_seconds("timeout"))
    rpm: float | None = attrs.field(default=None, validator=_seconds("rpm"))
    tpm: float | None = attrs.field(default=None, validator=_seconds("tpm"))
    shared_limit: str | None = attrs.field(
        default=None, validator=_text("shared_limit"), repr=_shown_place
    )
    patience: float = attrs.field(default=600.0, validator=_seconds("patience", zero=True))
    pacing: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    adaptive: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    max_errors: int | None = attrs.field(default=None, validator=_whole("max_errors", none=True))
    backend: str = attrs.field(default="asyncio", validator=_one_of("backend", BACKENDS))
    echo_latency: float = attrs.field(default=0.0, validator=_seconds("echo_latency", zero=True))
    prices: dict[str, Price] | None = attrs.field(default=None, converter=_prices)
    cache: str | None = attrs.field(
        default=None, converter=_place, validator=_text("cache"), repr=_shown_place
    )
    cache_namespace: str | None = attrs.field(default=None, validator=_text("cache_namespace"))
    telemetry: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    capture_content: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    deployments: tuple[DeploymentSpec, ...] | None = attrs.field(
        default=None, converter=_deployments
    )
    hedge_after: float | str | None = attrs.field(default=None, validator=_hedge_after)
    schema: dict[str, Any] | None = attrs.field(default=None, validator=check_job_schema)
    max_reasks: int = attrs.field(
        default=DEFAULT_MAX_REASKS, validator=_whole("max_reasks", zero=True)
    )
    max_cost_usd: float | None = attrs.field(default=None, validator=_seconds("max_cost_usd"))

    def __attrs_post_init__(self) -> None:
        if self.max_cost_usd is not None and not self.prices:
            raise ValueError("JobSpec: max_cost_usd needs prices (a price table) to count cost")
        if self.echo_latency and self.provider != "echo":
            raise ValueError(
                f"JobSpec: echo_latency applies to provider 'echo' only, not {self.provider!r}"
            )
        if self.deployments is not None:
            if self.shared_limit is not None and not any(d.rpm or d.tpm for d in self.deployments):
                raise ValueError(
                    "JobSpec: shared_limit needs an rpm or tpm on some deployment: the budget "
                    "to share"
                )
        elif self.hedge_after is not None:
            raise ValueError("JobSpec: hedge_after applies to deployments only")
        elif self.shared_limit is not None and self.rpm is None and self.tpm is None:
            raise ValueError("JobSpec: shared_limit needs rpm or tpm: the budget to share")
        if self.capture_content and not self.telemetry:
            raise ValueError("JobSpec: capture_content needs telemetry=True")

    @property
    def key_variable(self) -> str | None:
        """The environment variable the key is read from (None for the echo provider)."""
        if self.provider == "echo":
            return None
        return self.api_key_env or key_variable(self.provider)


def key_variable(provider: str) -> str:
    """The variable a provider's key is read from: its own, or a fallback that is set."""
    variable = KEY_VARIABLES[provider]
    fallback = FALLBACK_KEY_VARIABLES.get(provider)
    if fallback and not os.environ.get(variable, "").strip() and os.environ.get(fallback):
        return fallback
    return variable


def read_key(spec: JobSpec) -> str | None:
    """The API key from the environment; raises :class:`JobError` when it is missing."""
    variable = spec.key_variable
    if variable is None or spec.deployments is not None:
        return None
    try:
        return env_key(variable, f"provider {spec.provider!r}")
    except ValueError as exc:
        raise JobError(str(exc)) from None


def scrubber(secret: str | None) -> Callable[[str], str]:
    """A function blanking ``secret`` out of a text: raw, JSON-escaped or URL-encoded."""
    if not secret:
        return _same
    forms = {secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe="")}
    forms.add(json.dumps(secret, ensure_ascii=True).replace("/", "\\/")[1:-1])
    ordered = sorted(forms, key=len, reverse=True)

    def scrub(text: str) -> str:
        for form in ordered:
            if form in text:
                text = text.replace(form, "[redacted]")
        return text

    return scrub


def _same(text: str) -> str:
    return text
