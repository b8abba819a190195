"""Embeddings: the `llmfanout embed` pipeline against its I/O floor, packing, base64 decoding.

    python benchmarks/bench_embed.py [--rows 200000] [--concurrency 8] [--rounds 3]
    python benchmarks/bench_embed.py --rows 1000000 --rounds 1   # the 1M-row run (minutes)

1. Throughput: in fresh processes on one input file of short texts, the CLI (echo
   provider: deterministic vectors, no network; JSONL output, crash-safe writes, the
   validating first pass) against the floor (read each line, parse it once, write a row
   with a constant vector of the same length, no embedding). Prints rows/s, the ratio to
   the floor (target: at most 2x), with and without the CLI's startup (importing the
   library), as medians of alternated runs, and peak memory at N and N/4 rows.
2. Packing: requests sent for random short texts at 2048 inputs and 300,000 tokens per
   request, against the fewest the caps allow (target: within 1%).
3. Decoding a 2048 x 1536 ``/embeddings`` answer: base64 against JSON float lists (target:
   at least 5x faster).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmfanout import EchoProvider, EmbeddingCaps, aembed
from llmfanout._core._packing import Packer, estimate_tokens
from llmfanout.providers._embeddings_format import openai_vectors

# The floor: the same read, parse and write of every row, with no embedding and nothing
# the CLI adds (checks, packing, locking, fsync): each line decoded and parsed once as
# the CLI does, each row encoded by the JSON encoder, written through a buffer, with a
# constant vector of the same length and digits as the echo provider's.
FLOOR = r"""
import json, sys
source, output = sys.argv[1], sys.argv[2]
dumps = json.JSONEncoder(ensure_ascii=False).encode
vector = [-0.3359375, 0.796875, 0.1015625, -0.875, 0.4765625, -0.0625, 0.921875, -0.5078125]
with open(source, "rb") as lines, open(output, "w") as out:
    for raw in lines:
        row = json.loads(raw.decode())
        out.write(dumps({"id": row["id"], "success": True, "embedding": vector,
                         "error": None, "model": "echo"}) + "\n")
"""

MEASURE = r"""
import resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stderr=subprocess.DEVNULL)
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(wall, peak)
"""


def write_corpus(path: Path, rows: int) -> None:
    rng = random.Random(1)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    with path.open("w") as file:
        for i in range(rows):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
            file.write(json.dumps({"id": f"doc-{i}", "text": text}) + "\n")


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of a command in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *command], check=True, capture_output=True, text=True
    )
    wall, peak = done.stdout.split()
    return float(wall), int(peak) / 1024


def throughput(rows: int, concurrency: int, rounds: int, work: Path) -> None:
    print(f"1. throughput, {rows:,} short texts, echo provider, JSONL out, {rounds} rounds")
    # The CLI imports the whole library before its first row (the floor imports json):
    # a fixed cost, shown apart, that a 1M-row run spreads thin and a short one does not.
    # Runs alternate (floor, asyncio, trio, floor, ...) so a loaded machine's swings fall
    # on each alike; medians are shown.
    walls: dict[str, list[float]] = {"startup": [], "floor": [], "asyncio": [], "trio": []}
    peaks: dict[tuple[int, str], float] = {}
    corpus = work / f"corpus-{rows}.jsonl"
    write_corpus(corpus, rows)

    def cli(source: Path, n: int, backend: str) -> list[str]:
        out = work / f"out-{n}-{backend}.jsonl"
        out.unlink(missing_ok=True)
        command = [sys.executable, "-m", "llmfanout", "embed", str(source), "-o", str(out)]
        return [*command, "--concurrency", str(concurrency), "--backend", backend]

    for _ in range(rounds):
        walls["startup"].append(measure([sys.executable, "-c", "import llmfanout._cli._main"])[0])
        floor = [sys.executable, "-c", FLOOR, str(corpus), str(work / "floor.jsonl")]
        walls["floor"].append(measure(floor)[0])
        for backend in ("asyncio", "trio"):
            wall, peaks[(rows, backend)] = measure(cli(corpus, rows, backend))
            walls[backend].append(wall)
    startup, floor_wall = statistics.median(walls["startup"]), statistics.median(walls["floor"])
    print(f"   floor   {rows / floor_wall:>9,.0f} rows/s   (runs {_runs(walls['floor'])})")
    for backend in ("asyncio", "trio"):
        wall = statistics.median(walls[backend])
        print(
            f"   {backend:7} {rows / wall:>9,.0f} rows/s   ratio {wall / floor_wall:.2f}x "
            f"(target <= 2x; {(wall - startup) / floor_wall:.2f}x without the CLI's "
            f"{startup:.2f} s startup)   (runs {_runs(walls[backend])})"
        )
    small = work / f"corpus-{rows // 4}.jsonl"
    write_corpus(small, rows // 4)
    for backend in ("asyncio", "trio"):
        _, low = measure(cli(small, rows // 4, backend))
        big = peaks[(rows, backend)]
        print(
            f"   {backend:7} peak memory {low:.0f} MiB at {rows // 4:,} rows, {big:.0f} MiB "
            f"at {rows:,} rows ({big / low:.2f}x for 4x the rows)"
        )


def _runs(walls: list[float]) -> str:
    return " ".join(f"{wall:.2f}" for wall in walls) + " s"


def packing() -> None:
    print("2. packing at 2048 inputs and 300,000 tokens per request")
    rng = random.Random(2)
    caps = EmbeddingCaps(max_inputs=2048, max_tokens=300_000)
    for label, low, high in (("short", 5, 400), ("long", 200, 2000), ("mixed", 5, 8000)):
        texts = ["x" * rng.randint(low, high) for _ in range(200_000)]
        tokens = sum(estimate_tokens(t) for t in texts)
        floor = max(math.ceil(len(texts) / caps.max_inputs), math.ceil(tokens / caps.max_tokens))
        sent = sum(1 for _ in Packer(enumerate(texts), caps))
        print(
            f"   {label:6} texts: {sent} requests, fewest the caps allow {floor} "
            f"({(sent / floor - 1) * 100:.2f}% over; target <= 1%)"
        )
    provider = EchoProvider()
    result = asyncio.run(aembed(provider, [f"t{i}" for i in range(100_000)]))
    print(f"   aembed, 100,000 texts through the echo provider: {result.requests} requests")


def decoding(repeat: int = 3) -> None:
    print("3. decoding a 2048 x 1536 /embeddings answer")
    rng = random.Random(3)
    vectors = [[rng.uniform(-1, 1) for _ in range(1536)] for _ in range(2048)]
    floats = json.dumps(
        {"data": [{"index": i, "embedding": v} for i, v in enumerate(vectors)]}
    ).encode()
    packed = [base64.b64encode(struct.pack("<1536f", *v)).decode() for v in vectors]
    b64 = json.dumps(
        {"data": [{"index": i, "embedding": v} for i, v in enumerate(packed)]}
    ).encode()

    def best(body: bytes) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            openai_vectors(json.loads(body), 2048)
            times.append(time.perf_counter() - start)
        return min(times)

    slow, fast = best(floats), best(b64)
    print(
        f"   JSON floats {slow * 1000:.1f} ms ({len(floats) / 1e6:.1f} MB), base64 "
        f"{fast * 1000:.1f} ms ({len(b64) / 1e6:.1f} MB): {slow / fast:.1f}x faster "
        "(target >= 5x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternated runs of each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        throughput(args.rows, args.concurrency, args.rounds, Path(work))
    packing()
    decoding()


if __name__ == "__main__":
    main()
