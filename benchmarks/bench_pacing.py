"""Pacing by advertised limits: how close ``llmfanout run`` gets to a key's limit, unaided.

The issue's scenarios at full size: 300 rows through ``llmfanout run --provider openai
--concurrency 64`` with no ``--rpm``, against the loopback fake server enforcing 600
requests a minute per key (limit headers on every answer, real 429s with the real wait),
in the servers' flavours:

- ``minute``: a bucket a minute deep, refilled evenly (what OpenAI and Anthropic document);
- ``second``: the same limit enforced over one second (the "shorter spans" both warn of);
- ``tokens``: 7,800 tokens a minute (a row costs 13 with ``max_tokens`` 10: 600 rows);
- ``anthropic``: ``minute`` on the Anthropic API, its own header format;
- ``overload``: no limit headers at all, 429 without ``Retry-After`` past 20 in flight.

Each is run three ways, in the same process: ``paced`` (the defaults), ``unpaced``
(``--no-pacing --no-adaptive``: what a client that ignores the headers gets) and ``told``
(``--rpm``/``--tpm`` set to the true limit: the best a user who knows it can do; the floor). The
figures: wall time against the ideal ``rows / rate`` (the issue asks for at most 1.25x),
the share of requests answered 429 (at most 5%), and the rate achieved over the run as a
share of the advertised one. Times are measured on the server's clock.

Run: ``python benchmarks/bench_pacing.py`` (about 8 minutes), ``--quick`` for a smoke run
(a limit ten times faster), ``--only minute,overload`` for some flavours, ``--backend trio``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from support.fake_llm_server import ServerLimit, fake_llm_server_in_thread  # noqa: E402

ROWS = 300
CONCURRENCY = 64
TOKENS_PER_ROW = 13  # what the server counts: "say row-123" is 3 tokens, + max_tokens 10
FLAVOURS = ("minute", "second", "tokens", "anthropic", "overload")


def server_setup(flavour: str, per_minute: float) -> tuple[ServerLimit | None, int | None]:
    """The server's limit (None: none) and ``overload_after`` for a flavour."""
    if flavour == "minute" or flavour == "anthropic":
        return ServerLimit(requests_per_minute=per_minute), None
    if flavour == "second":
        return ServerLimit(requests_per_minute=per_minute, burst=1.0), None
    if flavour == "tokens":
        return ServerLimit(tokens_per_minute=per_minute * TOKENS_PER_ROW), None
    return None, 20


def one_run(flavour: str, how: str, per_minute: float, backend: str) -> dict[str, float]:
    limit, overload_after = server_setup(flavour, per_minute)
    provider = "anthropic" if flavour == "anthropic" else "openai"
    with tempfile.TemporaryDirectory() as directory, fake_llm_server_in_thread() as server:
        server.limit = limit
        server.overload_after = overload_after
        server.latency = 0.2 if flavour == "overload" else 0.05
        source, output = Path(directory, "in.jsonl"), Path(directory, "out.jsonl")
        source.write_text(
            "".join(
                json.dumps({"id": f"r{i}", "prompt": f"say row-{i}"}) + "\n" for i in range(ROWS)
            )
        )
        base = server.openai_base_url if provider == "openai" else server.anthropic_base_url
        args = [
            sys.executable, "-m", "llmfanout", "run", str(source), "-o", str(output),
            "--provider", provider, "--model", "m", "--base-url", base,
            "--concurrency", str(CONCURRENCY), "--params", '{"max_tokens": 10}',
            "--backend", backend, "--quiet",
        ]  # fmt: skip
        if how == "unpaced":
            args += ["--no-pacing", "--no-adaptive"]
        elif how == "told" and limit is not None:
            if limit.tokens_per_minute:
                args += ["--tpm", str(limit.tokens_per_minute)]
            else:
                args += ["--rpm", str(limit.requests_per_minute)]
        elif how == "told":
            args += ["--concurrency", "20"]  # told the server's size, for overload
        variable = "OPENAI_API_KEY" if provider == "openai" else "ANTHROPIC_API_KEY"
        env = {**os.environ, variable: "sk-bench"}
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        rows = (
            [json.loads(line) for line in output.read_text().splitlines()]
            if output.exists()
            else []
        )
        times = sorted(r.time for r in server.requests)
        refused = len(server.limited)
        sent = len(server.requests)
    ok = sum(1 for row in rows if row["success"])
    took = times[-1] - times[0] if times else 0.0
    return {
        "status": done.returncode,
        "ok": ok,
        "sent": sent,
        "refused": refused,
        "took": took,
    }


def report(flavour: str, per_minute: float, runs: dict[str, dict[str, float]]) -> None:
    ideal = ROWS / (per_minute / 60)
    if flavour == "overload":  # no advertised limit: compare with being told the size
        ideal = runs["told"]["took"] or 1.0
        print(f"\n{flavour}: {ROWS} rows, no limit headers; 'ideal' is --concurrency 20")
    else:
        print(f"\n{flavour}: {ROWS} rows, limit {per_minute:g}/min -> ideal {ideal:.1f} s")
    print(f"  {'how':<9} {'ok':>5} {'sent':>5} {'429s':>6} {'time s':>8} {'x ideal':>8} "
          f"{'of limit':>9} {'x told':>7}")  # fmt: skip
    told = runs.get("told", {}).get("took") or None
    for how, run in runs.items():
        took = run["took"]
        share = run["refused"] / run["sent"] if run["sent"] else 0.0
        rate = (ROWS / took) / (per_minute / 60) if took else float("nan")
        versus = f"{took / told:7.2f}" if told else "      -"
        print(
            f"  {how:<9} {run['ok']:>5.0f} {run['sent']:>5.0f} {share:>6.1%} {took:>8.2f} "
            f"{took / ideal:>8.2f} {rate:>9.1%} {versus}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a limit ten times faster")
    parser.add_argument("--only", default=",".join(FLAVOURS), help="flavours, comma-separated")
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    args = parser.parse_args()
    per_minute = 6000.0 if args.quick else 600.0
    for flavour in args.only.split(","):
        runs = {
            how: one_run(flavour, how, per_minute, args.backend)
            for how in ("paced", "unpaced", "told")
        }
        report(flavour, per_minute, runs)


if __name__ == "__main__":
    main()
