"""Run every benchmark and print (and save) the tables: ``make bench``.

    python -m bench            the full run (a few minutes on 2 cores)
    python -m bench --quick    a small payload, 2 rounds, one heap search per
                               configuration, no P-256 or push benchmark, one
                               round of the flash-timing impact runs (a
                               smoke test of the code paths; its figures are
                               not the product's)
    python -m bench --only impact   one part alone (p256, update, impact, push)

The tables go to bench/results/latest.md, the figures as one flat JSON
object to bench/results/latest.json (``--out DIR`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import impact_bench, update_bench

RESULTS = Path(__file__).resolve().parent / "results"


def _p256() -> tuple[str, float | None]:
    from bench import p256_bench

    text = p256_bench.run()
    found = re.search(r"speed-up over naive: ([0-9.]+)x", text)
    return text, float(found.group(1)) if found else None


def _push() -> str:
    from bench import push_bench

    return push_bench.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: small payload, 2 rounds, 1 heap search, no p256/push")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds (15; quick 2)")
    parser.add_argument("--heap-runs", type=int,
                        help="heap searches per configuration (5; quick 1; 0 skips them)")
    parser.add_argument("--board-rounds", type=int,
                        help="rounds of the impact runs with the flash timing model (3; quick 1; "
                             "0 skips them)")
    parser.add_argument("--only", choices=("p256", "update", "impact", "push"),
                        help="run this part alone")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 15)
    heap_runs = args.heap_runs if args.heap_runs is not None else (1 if args.quick else 5)
    board_rounds = args.board_rounds if args.board_rounds is not None else (1 if args.quick
                                                                             else 3)
    size = update_bench.QUICK_SIZE if args.quick else update_bench.SIZE
    started = time.monotonic()
    sections: list[str] = []
    figures: dict[str, Any] = {"quick": args.quick, "rounds": rounds, "heap_runs": heap_runs}
    failed: list[str] = []

    def section(name: str, fn: Callable[[], str], part: str = "") -> None:
        if args.only and args.only != (part or name):
            return
        try:
            sections.append(fn())
        except Exception as e:  # one failed benchmark does not lose the others' figures
            failed.append(name)
            print(f"bench: {name} failed: {e}", file=sys.stderr)
            sections.append(f"## {name}: FAILED\n\n{e}")

    # the servers' logs of connections a heap search cuts short are noise here
    for noisy in ("asyncio", "aiohttp", "mpota_host"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    figures["p256_verify_vs_naive"] = None
    if not args.quick:
        def p256() -> str:
            text, figures["p256_verify_vs_naive"] = _p256()
            return text
        section("P-256 verify", p256, "p256")

    def update() -> str:
        text, found = update_bench.run(rounds, heap_runs, size)
        figures.update(found)
        return text
    section("update", update)

    def impact() -> str:
        text, found = impact_bench.run(rounds, size, board_rounds)
        figures.update(found)
        return text
    section("impact on the application", impact, "impact")
    if not args.quick:
        section("push", _push)
    figures["failed"] = " ".join(failed)
    figures["bench_seconds"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    text = "\n\n".join(sections) + "\n"
    (args.out / "latest.md").write_text(text)
    (args.out / "latest.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(text)
    print(f"(saved to {args.out / 'latest.md'} and {args.out / 'latest.json'}; "
          f"{figures['bench_seconds']:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
