"""Server-sent events: an incremental parser for ``text/event-stream`` bodies.

Follows the WHATWG HTML "event stream interpretation": lines end in CRLF, LF or CR (a CR
at the end of one chunk and an LF at the start of the next are one line end); a blank
line dispatches the event; ``data`` lines join with LF; one space after the colon is
dropped; lines starting with a colon are comments; a leading BOM is ignored; an event
without data is not dispatched. Bytes are decoded as UTF-8 across chunk boundaries.
Pure code: :class:`SSEDecoder` takes bytes and hands back events, nothing else.
"""

from __future__ import annotations

import codecs
import re

import attrs

_LINE_END = re.compile(r"\r\n|\r|\n")


@attrs.frozen
class Event:
    """One dispatched event: its ``event`` type (``"message"`` by default) and ``data``."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed it the body's chunks; it returns the events each chunk completed."""

    __slots__ = ("_cr", "_data", "_decoder", "_event", "_id", "_partial", "_retry", "_started")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""  # an incomplete line carried to the next chunk
        self._cr = False  # the last chunk ended in CR: an LF first in the next one is its pair
        self._started = False  # past a possible BOM
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by ``chunk``."""
        text = self._decoder.decode(chunk)
        return self._text(text)

    def close(self) -> list[Event]:
        """End of the body. An event not ended by a blank line is dropped, as the spec says."""
        self._text(self._decoder.decode(b"", final=True))
        self._partial = ""
        return []

    @property
    def pending(self) -> bool:
        """Whether bytes of an unfinished event are held (the body stopped mid-event)."""
        return bool(self._partial or self._data or self._event)

    def _text(self, text: str) -> list[Event]:
        if not text:
            return []
        if not self._started:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._cr and text.startswith("\n"):
            text = text[1:]
        self._cr = text.endswith("\r")
        events: list[Event] = []
        # Only CR and LF end lines here (str.splitlines would also split on \x0c, \u2028...).
        lines = _LINE_END.split(self._partial + text)
        self._partial = lines.pop()  # what follows the last line end: an unfinished line
        for line in lines:
            self._line(line, events)
        return events

    def _line(self, line: str, events: list[Event]) -> None:
        if not line:
            if self._data:
                events.append(
                    Event("\n".join(self._data), self._event or "message", self._id, self._retry)
                )
            self._data = []
            self._event = ""
            return
        if line.startswith(":"):
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
