"""What reading messages, building request bodies and parsing streams cost per call.

Each row is a per-call cost (microseconds, best of k) beside a floor measured in the
same run, so the ratio says what our checks and mappings add:

- ``LLMTask`` from LLMMessage values, and from mappings (read and checked into
  LLMMessages), against the floor ``tuple(messages)``.
- The OpenAI and Anthropic ``messages`` arrays for plain text messages, against the
  floor ``[{"role": m.role, "content": m.content} for m in messages]`` (the body built
  before content parts and tool calls existed).
- An OpenAI stream of 200 text deltas, decoded (SSE) and folded into a whole answer,
  against the floor ``body.split(b"\\n\\n")`` plus ``json.loads`` of each event, which
  checks nothing and builds nothing.

Run: ``python benchmarks/bench_messages.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import platform
import timeit
from collections.abc import Callable
from typing import Any

from llmfanout import LLMMessage, LLMTask
from llmfanout.providers._anthropic_format import messages_to_wire as anthropic_wire
from llmfanout.providers._openai_format import OpenAIStream
from llmfanout.providers._openai_format import messages_to_wire as openai_wire
from llmfanout.providers._sse import SSEDecoder

MESSAGES = [
    LLMMessage("system", "You are a careful assistant. Answer in one sentence."),
    LLMMessage("user", "What is the boiling point of water at sea level, in Celsius?"),
    LLMMessage("assistant", "100 degrees Celsius."),
    LLMMessage("user", "And in Fahrenheit?"),
]
MAPPINGS = [{"role": m.role, "content": m.content} for m in MESSAGES]


def stream_body(deltas: int) -> bytes:
    head = {"id": "chatcmpl-1", "model": "gpt-4o-mini", "object": "chat.completion.chunk"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return f"data: {json.dumps({**head, 'choices': [choice]})}\n\n".encode()

    parts = [chunk({"role": "assistant", "content": ""})]
    parts += [chunk({"content": f"word{i} "}) for i in range(deltas)]
    parts.append(chunk({}, "stop"))
    usage = {"prompt_tokens": 20, "completion_tokens": deltas, "total_tokens": 20 + deltas}
    parts.append(f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n".encode())
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


BODY = stream_body(200)
CHUNKS = [BODY[i : i + 1400] for i in range(0, len(BODY), 1400)]  # a TCP segment's worth


def fold_stream() -> None:
    decoder, stream = SSEDecoder(), OpenAIStream()
    for chunk in CHUNKS:
        for event in decoder.feed(chunk):
            stream.feed(event)
    assert stream.done
    stream.body()


def floor_stream() -> None:
    for raw in BODY.split(b"\n\n"):
        if raw and raw != b"data: [DONE]":
            json.loads(raw[6:])


def best_us(fn: Callable[[], object], number: int, repeats: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeats)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few repeats")
    args = parser.parse_args()
    number, repeats = (2000, 3) if args.quick else (20000, 7)
    print(f"python {platform.python_version()}, best of {repeats}, microseconds per call")
    rows = [
        ("LLMTask(LLMMessage values)", lambda: LLMTask(MESSAGES), lambda: tuple(MESSAGES)),
        ("LLMTask(mappings)", lambda: LLMTask(MAPPINGS), lambda: tuple(MESSAGES)),
        (
            "OpenAI messages array",
            lambda: openai_wire(MESSAGES),
            lambda: [{"role": m.role, "content": m.content} for m in MESSAGES],
        ),
        (
            "Anthropic messages array",
            lambda: anthropic_wire(MESSAGES),
            lambda: [{"role": m.role, "content": m.content} for m in MESSAGES],
        ),
    ]
    print(f"{'what':<40}{'ours':>10}{'floor':>10}{'ratio':>8}")
    for name, ours, floor in rows:
        a, b = best_us(ours, number, repeats), best_us(floor, number, repeats)
        print(f"{name:<40}{a:>10.2f}{b:>10.2f}{a / b:>8.2f}")
    n = max(number // 100, 20)
    a, b = best_us(fold_stream, n, repeats), best_us(floor_stream, n, repeats)
    print(f"{'stream of 200 deltas, SSE + fold':<40}{a:>10.1f}{b:>10.1f}{a / b:>8.2f}")
    print(f"  = {a / 203:.2f} us per event, {len(BODY) / a:.0f} bytes per us")


if __name__ == "__main__":
    main()
