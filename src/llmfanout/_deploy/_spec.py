"""A deployment: one provider (a key on an endpoint, a model) among a pool's, and its file form.

:class:`Deployment` is what :class:`~llmfanout.Pool` takes: a provider object and what
the pool should know of it (its name, weight, limits, context window, the causes it is
a fallback for). :class:`DeploymentSpec` is the same as plain data, as a deployments
file holds it (``llmfanout run --deployments FILE``): a key is named by its environment
variable only, read where the job runs, so no file ever holds one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from .._base._types import AsyncLLMProvider
from .._flow._limiter import Limiter
from ._causes import CAUSES

__all__ = [
    "KINDS",
    "Deployment",
    "DeploymentSpec",
    "check_roster",
    "load_deployments",
    "parse_deployments",
]

KINDS = ("openai", "anthropic", "azure", "echo")
"""The ``provider`` a deployments file may name."""

_KEY_VARIABLES = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "azure": "AZURE_OPENAI_API_KEY",
}


def _name(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"Deployment: name is {value!r}; give a non-empty string")


def _positive(none: bool) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and none:
            return
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ValueError(
                f"deployment {getattr(instance, 'name', '?')!r}: {attribute.name} is "
                f"{value!r}; give a number > 0" + (" or leave it out" if none else "")
            )

    return check


def _window(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"deployment {instance.name!r}: context_window is {value!r}; give a whole "
            "number of tokens >= 1, or leave it out"
        )


def _causes(value: Iterable[str] | str | None) -> frozenset[str]:
    if value is None:
        return frozenset()
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        if item not in CAUSES:
            raise ValueError(f"fallback_for holds {item!r}; the causes are {', '.join(CAUSES)}")
    return frozenset(items)


@attrs.frozen(kw_only=True)
class Deployment:
    """One provider in a :class:`~llmfanout.Pool`, and what the pool should know of it.

    - ``name``: how results (``response.metadata["deployment"]``) and the summary name it.
    - ``provider``: any provider object (an ``OpenAIProvider`` with its own key...).
    - ``model``: the model this deployment serves, sent as the call's ``model`` (None:
      the call's own, else the provider's).
    - ``weight``: preference among deployments with room (2.0: twice the share of one
      with 1.0).
    - ``rpm``, ``tpm``: its own requests and tokens per minute (besides the limits its
      answers advertise, which it is paced by anyway); ``limit``: any
      :class:`~llmfanout.Limiter` instead (a budget shared through Redis).
    - ``context_window``: the tokens it takes (prompt plus ``max_tokens``): a call that
      would not fit is never sent to it.
    - ``fallback_for``: causes (``"context_window"``, ``"content_filter"``,
      ``"model_not_found"``) it is a fallback for: it takes only calls another
      deployment refused for one of them, in the pool's order.
    """

    name: str = attrs.field(validator=_name)
    provider: AsyncLLMProvider = attrs.field(eq=False)
    model: str | None = None
    weight: float = attrs.field(default=1.0, validator=_positive(False))
    rpm: float | None = attrs.field(default=None, validator=_positive(True))
    tpm: float | None = attrs.field(default=None, validator=_positive(True))
    context_window: int | None = attrs.field(default=None, validator=_window)
    fallback_for: frozenset[str] = attrs.field(default=frozenset(), converter=_causes)
    limit: Limiter | None = attrs.field(default=None, eq=False)

    def __attrs_post_init__(self) -> None:
        if not callable(getattr(self.provider, "complete", None)):
            raise TypeError(
                f"deployment {self.name!r}: provider is a {type(self.provider).__name__} "
                "with no complete() method"
            )


_FIELDS = {
    "name",
    "provider",
    "model",
    "base_url",
    "api_key_env",
    "azure_ad_token_env",
    "api_version",
    "weight",
    "rpm",
    "tpm",
    "context_window",
    "fallback_for",
}


@attrs.frozen(kw_only=True)
class DeploymentSpec:
    """One entry of a deployments file, checked: plain data, picklable, holding no key.

    ``api_key_env`` names the environment variable holding the key (default the
    provider's own: ``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ``AZURE_OPENAI_API_KEY``);
    ``azure_ad_token_env`` (Azure only, instead of ``api_key_env``) names the variable
    holding a Microsoft Entra ID token, sent as a bearer; ``api_version`` is Azure's
    (default ``OPENAI_API_VERSION``).
    """

    name: str
    provider: str
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    azure_ad_token_env: str | None = None
    api_version: str | None = None
    weight: float = 1.0
    rpm: float | None = None
    tpm: float | None = None
    context_window: int | None = None
    fallback_for: tuple[str, ...] = ()

    @property
    def key_variable(self) -> str | None:
        """The environment variable its key is read from (None: it needs none)."""
        if self.provider == "echo":
            return None
        return self.azure_ad_token_env or self.api_key_env or _KEY_VARIABLES[self.provider]


def _entry(index: int, raw: object, where: str) -> DeploymentSpec:
    at = f"{where}: deployment {index + 1}"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{at} is {type(raw).__name__}; give an object with name, provider...")
    name = raw.get("name")
    if isinstance(name, str) and name.strip():
        at = f"{where}: deployment {name!r}"
    for key in raw:
        if key in ("api_key", "key", "password", "token"):
            raise ValueError(
                f"{at}: {key!r} holds a secret; a deployments file names the key's "
                'environment variable only: "api_key_env": "MY_KEY_VARIABLE"'
            )
        if key not in _FIELDS:
            raise ValueError(
                f"{at}: unknown field {key!r}; the fields are {', '.join(sorted(_FIELDS))}"
            )
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{at}: name is {name!r}; give each deployment a name")
    kind = raw.get("provider")
    if kind not in KINDS:
        raise ValueError(f"{at}: provider is {kind!r}; give one of {', '.join(KINDS)}")
    for text in ("model", "base_url", "api_key_env", "azure_ad_token_env", "api_version"):
        value = raw.get(text)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"{at}: {text} is {value!r}; give a non-empty string")
    if raw.get("azure_ad_token_env") is not None:
        if kind != "azure":
            raise ValueError(
                f'{at}: azure_ad_token_env is for provider "azure" only; for {kind!r} '
                "name the key's variable in api_key_env"
            )
        if raw.get("api_key_env") is not None:
            raise ValueError(
                f"{at}: give api_key_env or azure_ad_token_env, not both (a token is sent "
                "instead of a key)"
            )
    fallback = raw.get("fallback_for") or ()
    if isinstance(fallback, str) or not isinstance(fallback, list | tuple):
        raise ValueError(
            f'{at}: fallback_for is {fallback!r}; give a list such as ["context_window"]'
        )
    try:
        causes = _causes(fallback)
        spec = DeploymentSpec(
            name=name,
            provider=kind,
            model=raw.get("model"),
            base_url=raw.get("base_url"),
            api_key_env=raw.get("api_key_env"),
            azure_ad_token_env=raw.get("azure_ad_token_env"),
            api_version=raw.get("api_version"),
            weight=raw.get("weight", 1.0),
            rpm=raw.get("rpm"),
            tpm=raw.get("tpm"),
            context_window=raw.get("context_window"),
            fallback_for=tuple(sorted(causes)),
        )
        # The numbers are checked as a Deployment checks them.
        _positive(False)(spec, attrs.fields(Deployment).weight, spec.weight)
        _positive(True)(spec, attrs.fields(Deployment).rpm, spec.rpm)
        _positive(True)(spec, attrs.fields(Deployment).tpm, spec.tpm)
        _window(spec, attrs.fields(Deployment).context_window, spec.context_window)
    except ValueError as exc:
        message = str(exc).replace(f"deployment {name!r}: ", "")
        raise ValueError(f"{at}: {message}") from None
    return spec


def parse_deployments(data: object, where: str = "deployments") -> tuple[DeploymentSpec, ...]:
    """Check a deployments list (parsed JSON); raise ``ValueError`` naming the entry and field."""
    if not isinstance(data, list) or not data:
        raise ValueError(f"{where}: give a non-empty JSON list of deployment objects")
    specs = tuple(_entry(i, raw, where) for i, raw in enumerate(data))
    check_roster([(s.name, bool(s.fallback_for)) for s in specs], where)
    return specs


def check_roster(roster: Sequence[tuple[str, bool]], where: str) -> None:
    """Each deployment (name, is a fallback) named once, and one at least not a fallback."""
    names = [name for name, _ in roster]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"{where}: two deployments are named {name!r}; give each its own name")
    if all(fallback for _, fallback in roster):
        raise ValueError(
            f"{where}: every deployment is a fallback (fallback_for); leave it out of at "
            "least one, which takes calls first"
        )


def load_deployments(path: str | os.PathLike[str]) -> tuple[DeploymentSpec, ...]:
    """Read and check a deployments file (JSON); raise ``ValueError`` saying what is wrong."""
    where = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except OSError as exc:
        raise ValueError(f"{where}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise ValueError(f"{where}: not JSON ({exc})") from None
    return parse_deployments(data, where)
