"""Run every benchmark and print (and save) the tables: ``make bench``."""

from __future__ import annotations

import sys
from pathlib import Path

from bench import p256_bench, push_bench, update_bench

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    RESULTS.mkdir(exist_ok=True)
    sections = [p256_bench.run(), update_bench.run(), push_bench.run()]
    text = "\n\n".join(sections) + "\n"
    (RESULTS / "latest.md").write_text(text)
    print(text)
    print(f"(saved to {RESULTS / 'latest.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
