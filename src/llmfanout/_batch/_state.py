"""The state file of a batch job: what was planned, created and collected, saved atomically.

Every change is written to a temporary file beside the state, fsynced, and renamed over
it (then the folder is fsynced), so after a crash the file holds either the state before
the change or the one after, never a mix. It holds no API key: the provider, base URL,
model, the JSON Schema the rows asked for (if any), and per part its ids, its batch id
and how far it got.

A part moves through these phases, each saved before the step that follows it::

    planned --(upload, OpenAI)--> creating --(create)--> submitted --(rows written)--> collected

A part found ``creating`` after a crash may or may not have a batch on the provider's
side: :mod:`._batch` reconciles it with the provider's list of batches before creating.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from typing import Any

import attrs

VERSION = 1
PHASES = ("planned", "creating", "submitted", "collected")
PROVIDERS = ("openai", "anthropic", "gemini")
ENDPOINTS = ("chat", "embeddings")

SERVER_ID = re.compile(r"(?:batches/|files/)?[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}", re.ASCII)
"""What a batch or file id a server gives may look like before it goes into a URL path:
``batch_abc``, ``msgbatch_01...``, ``file-abc``, Gemini's ``batches/abc``; never a space,
CR/LF or non-ASCII, and no slash but after Gemini's one collection prefix (so no ``..``
segment can ever be formed)."""

_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}", re.ASCII)
_RUN_ID = re.compile(r"[A-Za-z0-9]{1,32}", re.ASCII)


def is_server_id(value: object) -> bool:
    """Whether ``value`` is an id we may put in a URL path (see :data:`SERVER_ID`)."""
    return isinstance(value, str) and SERVER_ID.fullmatch(value) is not None


class BatchStateError(ValueError):
    """A state file that cannot be used: missing, unreadable, or from another job."""


@attrs.define
class Part:
    """One provider batch: the rows it carries and how far it got."""

    index: int
    tags: list[str]  # the rows' tags in request order: custom_id "<run>-<index>-<i>" is tags[i]
    size: int  # bytes of the request lines
    digest: str  # sha256 of the request lines, to notice an input that changed
    phase: str = "planned"
    file_id: str | None = None  # the uploaded request file (OpenAI)
    intent_at: float | None = None  # wall-clock time just before the create call
    batch_id: str | None = None
    status: str | None = None  # the provider's last reported status
    ended: bool = False  # the provider will change nothing more
    done: int = 0
    succeeded: int = 0
    failed: int = 0

    @property
    def rows(self) -> int:
        """Requests in this part."""
        return len(self.tags)


@attrs.define
class State:
    """Everything needed to carry a batch job on from another process."""

    run_id: str
    provider: str
    base_url: str
    model: str
    created_at: float
    max_requests: int
    max_bytes: int
    parts: list[Part] = attrs.Factory(list)
    input: str | None = None  # the input file, for the record (the CLI fills it)
    cancelled: bool = False  # cancel was asked: parts not yet created never will be
    api_key_env: str | None = None  # the variable the key is read from (never the key)
    endpoint: str = "chat"  # "chat", or "embeddings" (OpenAI's /v1/embeddings)
    # The JSON Schema the rows asked for natively (the CLI's --schema), and the file it
    # came from: answers are validated against it when collected, without --schema again.
    schema: dict[str, Any] | None = None
    schema_file: str | None = None
    version: int = VERSION

    def to_json(self) -> dict[str, Any]:
        """The state as JSON data."""
        return attrs.asdict(self, recurse=True)

    @classmethod
    def from_json(cls, data: Any, where: str) -> State:
        """The state from JSON data; ``BatchStateError`` naming ``where`` when it does not fit."""
        try:
            if data.get("version") != VERSION:
                raise BatchStateError(
                    f"{where}: state version {data.get('version')!r} is not {VERSION}; "
                    "it was written by another llmfanout release"
                )
            fields = {k: v for k, v in data.items() if k != "parts"}
            parts = [Part(**part) for part in data["parts"]]
            state = cls(**fields, parts=parts)
        except (AttributeError, KeyError, TypeError) as exc:
            raise BatchStateError(
                f"{where}: not an llmfanout batch state file ({exc}); restore it from a copy, "
                "or move it away to start a new job (batches already created are not reused)"
            ) from None
        problem = _problem(state)
        if problem is not None:
            raise BatchStateError(
                f"{where}: not a usable batch state file ({problem}); nothing was sent. "
                "Restore it from a copy, or move it away to start a new job"
            )
        return state


def _problem(state: State) -> str | None:
    """What makes a state file unusable (or unsafe to act on), before any request."""
    if state.provider not in PROVIDERS:
        return f"provider {state.provider!r} is not one of {', '.join(PROVIDERS)}"
    if state.endpoint not in ENDPOINTS:
        return f"endpoint {state.endpoint!r} is not one of {', '.join(ENDPOINTS)}"
    url = state.base_url
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        return f"base_url {url!r} is not an http(s) URL"
    if any(ord(c) <= 32 or ord(c) >= 127 for c in url):
        return "base_url holds spaces, control or non-ASCII characters"
    variable = state.api_key_env
    if variable is not None and not (isinstance(variable, str) and _VARIABLE.fullmatch(variable)):
        return f"api_key_env {variable!r} is not an environment variable name"
    if not isinstance(state.run_id, str) or not _RUN_ID.fullmatch(state.run_id):
        return f"run_id {state.run_id!r} is not one of ours (letters and digits)"
    if not isinstance(state.model, str):
        return "model is not a string"
    if state.schema is not None and not isinstance(state.schema, dict):
        return "schema is not a JSON object"
    if state.schema_file is not None and not isinstance(state.schema_file, str):
        return "schema_file is not a string"
    for name in ("max_requests", "max_bytes"):
        value = getattr(state, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"{name} {value!r} is not a whole number >= 1"
    for position, part in enumerate(state.parts):
        if part.index != position:
            return f"part {position} has index {part.index!r}"
        if part.phase not in PHASES:
            return f"part {position} has an unknown phase {part.phase!r}"
        if not isinstance(part.tags, list) or not all(isinstance(t, str) for t in part.tags):
            return f"part {position}: tags are not a list of strings"
        for name in ("batch_id", "file_id"):
            value = getattr(part, name)
            if value is not None and not is_server_id(value):
                return f"part {position}: {name} {value!r} is not a batch API id"
        for name in ("done", "succeeded", "failed", "size"):
            value = getattr(part, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                return f"part {position}: {name} {value!r} is not a count"
    return None


def state_path(output: str | os.PathLike[str]) -> str:
    """The state file that goes with an output file: ``OUTPUT.batch.json``."""
    return os.fspath(output) + ".batch.json"


def load(path: str | os.PathLike[str]) -> State:
    """Read a state file; ``BatchStateError`` when it is missing or not one."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = json.load(file)
    except FileNotFoundError:
        raise BatchStateError(
            f"{path} does not exist; submit the batch first (llmfanout batch submit)"
        ) from None
    except ValueError as exc:
        raise BatchStateError(f"{path}: not JSON ({exc}); restore it from a copy") from None
    return State.from_json(data, path)


def save(state: State, path: str | os.PathLike[str]) -> None:
    """Replace the state file atomically: temp file, fsync, rename, fsync the folder."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    data = json.dumps(state.to_json(), ensure_ascii=False, separators=(",", ":")).encode()
    fd, temporary = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp-", dir=folder)
    replaced = False
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        replaced = True
    finally:
        if not replaced:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    _sync_folder(folder)


def _sync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its rename is durable enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
