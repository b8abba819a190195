"""Server-sent events: an incremental parser for ``text/event-stream`` bodies.

Follows the WHATWG HTML "event stream interpretation": lines end in CRLF, LF or CR (a CR
at the end of one chunk and an LF at the start of the next are one line end); a blank
line dispatches the event; ``data`` lines join with LF; one space after the colon is
dropped; lines starting with a colon are comments; a leading BOM is ignored; an event
without data is not dispatched. Bytes are decoded as UTF-8 across chunk boundaries.
Pure code: :class:`SSEDecoder` takes bytes and hands back events, nothing else.

An unfinished line is held as a list of pieces, joined once when its end arrives, so a
long line costs time in proportion to its length (not its square); a line longer than
``max_line`` characters raises :class:`LineTooLong`.
"""

from __future__ import annotations

import codecs
import re

import attrs

_LINE_END = re.compile(r"\r\n|\r|\n")

MAX_LINE = 16 * 1024 * 1024
"""The longest line an event stream may send (characters): events carry a few tokens each."""


class LineTooLong(ValueError):
    """A line of the stream passed ``max_line`` characters."""


@attrs.frozen
class Event:
    """One dispatched event: its ``event`` type (``"message"`` by default) and ``data``."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed it the body's chunks; it returns the events each chunk completed."""

    __slots__ = (
        "_cr",
        "_data",
        "_decoder",
        "_event",
        "_held",
        "_id",
        "_max_line",
        "_pieces",
        "_retry",
        "_started",
    )

    def __init__(self, *, max_line: int = MAX_LINE) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pieces: list[str] = []  # an unfinished line, carried to the next chunk
        self._held = 0  # its length
        self._max_line = max_line
        self._cr = False  # the last chunk ended in CR: an LF first in the next one is its pair
        self._started = False  # past a possible BOM
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by ``chunk``; raises :class:`LineTooLong`."""
        text = self._decoder.decode(chunk)
        return self._text(text)

    def close(self) -> list[Event]:
        """End of the body. An event not ended by a blank line is dropped, as the spec says."""
        self._text(self._decoder.decode(b"", final=True))
        self._pieces, self._held = [], 0
        return []

    @property
    def pending(self) -> bool:
        """Whether bytes of an unfinished event are held (the body stopped mid-event)."""
        return bool(self._held or self._data or self._event)

    def _text(self, text: str) -> list[Event]:
        if not text:
            return []
        if not self._started:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._cr and text.startswith("\n"):
            text = text[1:]
        self._cr = text.endswith("\r")
        # Only CR and LF end lines here (str.splitlines would also split on \x0c, \u2028...).
        last = max(text.rfind("\n"), text.rfind("\r"))
        if last < 0:  # no line ends yet: hold the piece, look at it again only when one does
            self._hold(text)
            return []
        pieces = self._pieces
        if pieces:
            pieces.append(text[: last + 1])
            whole = "".join(pieces)
        else:
            whole = text[: last + 1]
        self._pieces, self._held = [], 0
        lines = _LINE_END.split(whole)
        lines.pop()  # the empty string after the last line end
        events: list[Event] = []
        limit = self._max_line
        for line in lines:
            if len(line) > limit:
                raise self._too_long()
            self._line(line, events)
        if last + 1 < len(text):
            self._hold(text[last + 1 :])
        return events

    def _hold(self, piece: str) -> None:
        self._pieces.append(piece)
        self._held += len(piece)
        if self._held > self._max_line:
            raise self._too_long()

    def _too_long(self) -> LineTooLong:
        return LineTooLong(f"has a line longer than {self._max_line} characters")

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
