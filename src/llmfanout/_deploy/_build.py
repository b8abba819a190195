"""A :class:`~llmfanout.Pool` made from deployment specs (a deployments file): keys read
from the environment where the job runs, each deployment its own provider and budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._base._checks import env_key
from .._base._types import AsyncLLMProvider
from .._flow._limiter import Limiter
from ._pool import Pool
from ._spec import Deployment, DeploymentSpec

__all__ = ["build_pool", "deployment_keys"]


def deployment_keys(specs: Sequence[DeploymentSpec]) -> dict[str, str]:
    """Each deployment's key from its environment variable; ``ValueError`` naming the
    deployment and the variable when one is missing."""
    keys: dict[str, str] = {}
    for spec in specs:
        variable = spec.key_variable
        if variable is None:
            continue
        keys[spec.name] = env_key(variable, f"deployment {spec.name!r}")
    return keys


def _provider(
    spec: DeploymentSpec, key: str | None, options: dict[str, Any], echo_latency: float = 0.0
) -> AsyncLLMProvider:
    if spec.provider == "echo":
        from ..providers._echo import EchoProvider

        return EchoProvider(latency=echo_latency, model=spec.model or "echo", record_calls=False)
    if spec.model is None:
        raise ValueError(
            f"deployment {spec.name!r}: give its model (for azure, the deployment's name)"
        )
    if spec.provider == "azure":
        from ..providers import AzureOpenAIProvider

        return AzureOpenAIProvider(
            spec.model,
            azure_endpoint=spec.base_url,
            api_version=spec.api_version,
            api_key=None if spec.azure_ad_token_env else key,
            azure_ad_token=key if spec.azure_ad_token_env else None,
            # The variable read, for a refusal to name (never the key).
            api_key_env=None if spec.azure_ad_token_env else spec.key_variable,
            azure_ad_token_env=spec.azure_ad_token_env,
            **options,
        )
    from ..providers import AnthropicProvider, OpenAIProvider

    cls = OpenAIProvider if spec.provider == "openai" else AnthropicProvider
    if spec.base_url:
        options = {**options, "base_url": spec.base_url}
    return cls(spec.model, api_key=key, api_key_env=spec.key_variable, **options)


def _shared(url: str, spec: DeploymentSpec) -> Limiter | None:
    """The deployment's budget in Redis, under a key of its own (None: it sets none)."""
    if spec.rpm is None and spec.tpm is None:
        return None
    from .._flow._redislimit import RedisRateLimit, split_key

    # The URL's own ?key= becomes the prefix: RedisRateLimit refuses a URL naming one key
    # beside another given as key=.
    client_url, given = split_key(url)
    key = f"{given}:{spec.name}" if given else f"deployment:{spec.name}"
    return RedisRateLimit(
        client_url, requests_per_minute=spec.rpm, tokens_per_minute=spec.tpm, key=key
    )


def build_pool(
    specs: Sequence[DeploymentSpec],
    *,
    keys: dict[str, str],
    max_connections: int = 100,
    timeout: float | None = None,
    shared_limit: str | None = None,
    hedge_after: float | str | None = None,
    echo_latency: float = 0.0,
    pacing: bool = True,
    adaptive: bool = True,
) -> Pool:
    """The pool for ``specs``; ``ValueError`` naming the deployment for one that cannot work.

    ``shared_limit``: a Redis URL; each deployment with ``rpm``/``tpm`` then keeps its
    budget there under its own key (``deployment:NAME``, or ``KEY:NAME`` with ``?key=``),
    shared by every worker using the same file. ``echo_latency``: seconds each ``echo``
    deployment waits per call (demos, benchmarks). ``pacing``, ``adaptive``: the pool's.
    """
    options: dict[str, Any] = {"max_connections": max_connections}
    if timeout:
        options["timeout"] = timeout
    deployments = []
    for spec in specs:
        try:
            provider = _provider(spec, keys.get(spec.name), options, echo_latency)
        except (TypeError, ValueError) as exc:
            message = str(exc)
            if spec.name not in message:
                message = f"deployment {spec.name!r}: {message}"
            raise ValueError(message) from None
        deployments.append(
            Deployment(
                name=spec.name,
                provider=provider,
                model=spec.model if spec.provider != "echo" else None,
                weight=spec.weight,
                rpm=spec.rpm,
                tpm=spec.tpm,
                context_window=spec.context_window,
                fallback_for=spec.fallback_for,
                limit=None if shared_limit is None else _shared(shared_limit, spec),
            )
        )
    return Pool(deployments, hedge_after=hedge_after, pacing=pacing, adaptive=adaptive)
