"""What an update costs the application: a task ticking every 10 ms on the
simulated board, beside an update (bench/onboard.py ``impact``).

Part 1, the simulator as it is (its flash has no timing), the bench's 1.5 MB
image over HTTPS, plain and encrypted, in interleaved rounds of three modes:

* idle: the ticker alone for as long as the last asyncio update took (the
  host's own scheduling jitter, and the tick rate the others are held to);
* async: ``await mpota.aio.update()`` beside the ticker (the asyncio agent);
* blocking: ``mpota.update()`` called from a task (the ticker cannot run:
  the contrast).

Per mode: the longest gap between ticks that overlaps the update
(``app_max_stall_ms``), the ticks during the update per unit of time over
the idle run's (``app_ticks_kept_ratio``), the update time; per round the
asyncio update time over the blocking one, and the time to process one
4 KiB block: in the blocking run of the same round, (last block read back -
first block written) / (blocks written - 1): between the two every other
block was downloaded (decrypted when encrypted) and written, and every block
read back and hashed.  Where the longest gap lies is
measured: the slot's blocks written and read back are timestamped in every
run, and one more asyncio update per release times every resume of the
agent's step generator (what it yielded before and after the longest).

Part 2, what a real board adds: the same with the simulator's flash timing
model (MPOTA_SIM_FLASH_TIMING=datasheet: W25Q32JV typical, a sector erase
45 ms, a 256-byte page 0.4 ms; device/sim/simflash.py) on a smaller image,
encrypted, with download.duty_pct 100 / 50 / 25 and a max_rate cap: the
longest stall is one block's erase and program, and what each option costs
in update time.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.update_bench import ONBOARD, TIMING_HEAP, BenchError, Rig, make_rig, spread

TICK_MS = 10
BOARD_SIZE = 128 * 1024  # part 2: 32 blocks of ~51 ms of flash time each
RATE_CAP = 32 * 1024  # part 2's max_rate (bytes/s): a quarter of the model's flash speed
TIMING_ENV = {"MPOTA_SIM_FLASH_TIMING": "datasheet"}


@dataclass
class Run:
    """One impact process: its window (the update, or the idle wait) and what it saw."""

    mode: str
    end_us: int
    ticks: list[int]  # us from the window's start (negative: before it)
    blocks: list[tuple[int, int]]  # (us, 1 written | 2 read back)
    resumes: list[list[Any]] = field(default_factory=list)

    @property
    def ms(self) -> float:
        return self.end_us / 1000

    def gaps(self) -> list[tuple[int, int]]:
        """(start, end) of every gap between ticks that overlaps the window."""
        pairs = zip(self.ticks, self.ticks[1:], strict=False)
        return [(a, b) for a, b in pairs if b > 0 and a < self.end_us]

    def max_stall(self) -> tuple[int, int]:
        gaps = self.gaps()
        if not gaps:
            raise BenchError(f"{self.mode}: no tick after the window: {self.ticks[-5:]}")
        return max(gaps, key=lambda g: g[1] - g[0])

    @property
    def max_stall_ms(self) -> float:
        a, b = self.max_stall()
        return (b - a) / 1000

    @property
    def tick_rate(self) -> float:
        """Ticks per ms inside the window."""
        return sum(1 for t in self.ticks if 0 < t <= self.end_us) / self.ms

    def block_ms(self) -> float:
        """(last block read back - first block written) / (blocks written - 1):
        between them every other block was downloaded and written, and all were
        read back and hashed."""
        written = [t for t, k in self.blocks if k == 1]
        read = [t for t, k in self.blocks if k == 2]
        if len(written) < 2 or not read:
            raise BenchError(f"{self.mode}: fewer than 2 blocks written, or none read back")
        return (read[-1] - written[0]) / 1000 / (len(written) - 1)

    def where(self, a: int, b: int) -> str:
        """What the agent was doing between a and b (us), from the block events."""
        written = [t for t, k in self.blocks if k == 1]
        read = [t for t, k in self.blocks if k == 2]
        w_in = sum(1 for t in written if a < t <= b)
        r_in = sum(1 for t in read if a < t <= b)
        if written and read and w_in == len(written) and r_in == len(read):
            return "all of it (every block written and read back in the gap)"
        if not written or (b <= written[0] and w_in == 0):
            return "before the first block (connect, TLS handshake, check, manifest verify)"
        if read and a >= read[-1]:
            return "after the read-back (state save, STAGED report)"
        if read and b > read[0]:
            return f"read-back ({r_in} block(s) read in the gap)"
        return f"download ({w_in} block(s) written in the gap)"


def _config(rig: Rig, download: dict[str, int]) -> None:
    """The board's mpota.json "download" section set to exactly these options."""
    path = rig.board.fs / "mpota.json"
    cfg = json.loads(path.read_text())
    cfg["download"] = download
    path.write_text(json.dumps(cfg, indent=2))


def impact(rig: Rig, mode: str, ms: int = 0, env: dict[str, str] | None = None,
           slices: bool = False) -> Run:
    rig.fresh()
    args = ["impact", mode, str(ms)] + (["slices"] if slices else [])
    result = rig.board.run(ONBOARD, args, env=env, heapsize=TIMING_HEAP, timeout=300)
    head = data = None
    for line in result.output.splitlines():
        if line.startswith("BENCH impact "):
            head = line.split(" ", 3)
        elif line.startswith("IMPACT "):
            data = json.loads(line[7:])
    if head is None or data is None or head[3] not in ("STAGED", "IDLE"):
        raise BenchError(f"{rig.name}: onboard.py impact {mode} ended {result.ended}:\n"
                         f"{result.output[-3000:]}")
    return Run(mode, int(data["end"]), [int(t) for t in data["ticks"]],
               [(int(t), int(k)) for t, k in data["blocks"]], data["resumes"])


# part 1: the simulator as it is


MODES = ("idle", "async", "blocking")


@dataclass
class Impact:
    rig: str
    size: int
    runs: dict[str, list[Run]]
    slices: Run  # the instrumented asyncio update

    def stat(self, fn: Any, mode: str) -> list[float]:
        return [fn(r) for r in self.runs[mode]]

    def kept(self, mode: str) -> list[float]:
        return [r.tick_rate / i.tick_rate for r, i in zip(self.runs[mode], self.runs["idle"],
                                                             strict=True)]

    def kept_pooled(self, mode: str) -> float:
        """All rounds' ticks during the update over what the idle runs' rate gives
        for the same total time (steadier than the per-round ratio of ~10 ticks)."""
        got = sum(r.tick_rate * r.ms for r in self.runs[mode])
        due = sum(i.tick_rate * r.ms for r, i in zip(self.runs[mode], self.runs["idle"],
                                                      strict=True))
        return got / due

    def ratio(self) -> list[float]:
        return [a.ms / b.ms for a, b in zip(self.runs["async"], self.runs["blocking"],
                                              strict=True)]

    def block_ms(self) -> list[float]:
        return [r.block_ms() for r in self.runs["blocking"]]

    def stall_over_block(self) -> list[float]:
        return [a.max_stall_ms / b for a, b in zip(self.runs["async"], self.block_ms(),
                                                      strict=True)]

    def where(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.runs["async"]:
            phase = r.where(*r.max_stall())
            out[phase] = out.get(phase, 0) + 1
        return out


def measure(encrypted: bool, rounds: int, size: int) -> Impact:
    name = "encrypted" if encrypted else "plain"
    print(f"impact ({name}): a 10 ms ticker beside a {size // 1024} KiB update over HTTPS, "
          f"{rounds} interleaved rounds of {', '.join(MODES)}...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        rig = make_rig(Path(tmp), encrypted, size)
        try:
            last = impact(rig, "async").ms  # (a warm-up: the idle run's first length)
            runs: dict[str, list[Run]] = {m: [] for m in MODES}
            for i in range(rounds):
                for mode in MODES[i % 3:] + MODES[:i % 3]:
                    run = impact(rig, mode, max(int(last), 50))
                    if mode == "async":
                        last = run.ms
                    runs[mode].append(run)
            slices = impact(rig, "async", slices=True)
        finally:
            rig.server.stop()
    return Impact(name, size, runs, slices)


def _fmt(values: list[float], unit: str = "", digits: int = 1) -> str:
    lo, mid, hi = spread(values)
    return f"{mid:.{digits}f}{unit} ({lo:.{digits}f} / {hi:.{digits}f})"


def _med(values: list[float], digits: int = 3) -> float:
    return round(statistics.median(values), digits)


def figures(plain: Impact, enc: Impact) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m, prefix in ((plain, ""), (enc, "encrypted_")):
        a, i, b = "async", "idle", "blocking"
        for key, values in (
                ("app_max_stall_ms", m.stat(lambda r: r.max_stall_ms, a)),
                ("app_ticks_kept_ratio", m.kept(a)),
                ("async_vs_blocking_update_time", m.ratio()),
                ("block_ms", m.block_ms()),
                ("app_max_stall_over_block", m.stall_over_block()),
                ("idle_max_gap_ms", m.stat(lambda r: r.max_stall_ms, i)),
                ("blocking_app_max_stall_ms", m.stat(lambda r: r.max_stall_ms, b)),
                ("blocking_app_ticks_kept_ratio", m.kept(b)),
                ("async_update_ms", m.stat(lambda r: r.ms, a)),
                ("blocking_update_ms", m.stat(lambda r: r.ms, b))):
            out[prefix + key] = _med(values)
            out[prefix + key + "_min"] = round(min(values), 3)
            out[prefix + key + "_max"] = round(max(values), 3)
        out[prefix + "app_ticks_kept_ratio_pooled"] = round(m.kept_pooled("async"), 3)
        top = m.slices.resumes[0] if m.slices.resumes else None
        out[prefix + "agent_longest_slice_ms"] = round(top[0] / 1000, 2) if top else None
    out["impact_payload_bytes"] = plain.size
    return out


def table(plain: Impact, enc: Impact) -> str:
    rounds = len(plain.runs["async"])
    lines = [
        f"## What an update costs the application: a task ticking every {TICK_MS} ms on the "
        f"simulated board, {plain.size / (1024 * 1024):.2f} MB over HTTPS "
        f"({rounds} interleaved rounds; median (min / max))",
        "",
        "| release | mode | update ms | longest gap between ticks, ms | ticks kept vs idle |",
        "|---|---|---|---|---|",
    ]
    for m in (plain, enc):
        for mode in MODES:
            kept = "1 (the reference)" if mode == "idle" else _fmt(m.kept(mode), "", 2)
            ms = "(as long as the last async update)" if mode == "idle" else \
                _fmt(m.stat(lambda r: r.ms, mode))
            lines.append(f"| {m.rig} | {mode} | {ms} "
                         f"| {_fmt(m.stat(lambda r: r.max_stall_ms, mode))} | {kept} |")
    lines += ["", "| release | async / blocking update time | one 4 KiB block, ms "
              "| async's longest gap / one block | where async's longest gap was (rounds) |",
              "|---|---|---|---|---|"]
    for m in (plain, enc):
        where = "; ".join(f"{k}: {v}" for k, v in sorted(m.where().items(), key=lambda kv: -kv[1]))
        lines.append(f"| {m.rig} | {_fmt(m.ratio(), '', 2)} | {_fmt(m.block_ms(), '', 3)} "
                     f"| {_fmt(m.stall_over_block(), '', 0)} | {where} |")
    lines += ["", "one 4 KiB block: in the blocking run of the same round, (last block read back "
              "- first block written) / (blocks written - 1): between the two every other block "
              "was downloaded (TLS decrypt; AES when encrypted) and written, and every block "
              "read back and hashed.", "",
              "The agent's longest uninterrupted steps (one instrumented asyncio update per "
              "release: every resume of its step generator timed; the yields around it; blocks "
              "written or read back before it):", "",
              "| release | ms | starts at ms | after | before | blocks before |",
              "|---|---|---|---|---|---|"]
    for m in (plain, enc):
        for dt, start, before, after, nblocks in m.slices.resumes[:5]:
            lines.append(f"| {m.rig} | {dt / 1000:.2f} | {start / 1000:.1f} | {before} "
                         f"| {after} | {nblocks} |")
    for m in (plain, enc):
        s = m.slices
        a, b = s.max_stall()
        inside = [f"{dt / 1000:.1f} ms at {t / 1000:.1f} ms ({before} -> {after})"
                  for dt, t, before, after, _ in s.resumes if t < b and t + dt > a]
        lines += ["", f"In the instrumented {m.rig} run the ticker's longest gap was "
                  f"{(b - a) / 1000:.1f} ms, from {a / 1000:.1f} to {b / 1000:.1f} ms "
                  f"({s.where(a, b)}); the agent's longest steps inside it: "
                  f"{'; '.join(inside) or 'none of the 24 longest'}."]
    lines += ["", "A step that starts after a wait until writable and ends in one, before any "
              "block, is the request's first write on a new connection: the non-blocking TLS "
              "handshake runs inside it (mpota/http.py), and its certificate-chain verify and "
              "ECDHE are one C call no driver can cut short.",
              "", "ticks kept, all rounds pooled (ticks during the updates / what the idle "
              f"rate gives in the same time): plain {plain.kept_pooled('async'):.3f}, "
              f"encrypted {enc.kept_pooled('async'):.3f}"]
    return "\n".join(lines)


# part 2: what a real board adds


BOARD_MODES: list[tuple[str, str, dict[str, int]]] = [
    ("idle", "idle", {}),
    ("blocking", "blocking", {}),
    ("async", "async", {}),
    ("async duty_pct 50", "async", {"duty_pct": 50}),
    ("async duty_pct 25", "async", {"duty_pct": 25}),
    (f"async max_rate {RATE_CAP}", "async", {"max_rate": RATE_CAP}),
]


@dataclass
class Board:
    size: int
    runs: dict[str, list[Run]]


def measure_board(rounds: int, size: int = BOARD_SIZE, encrypted: bool = True) -> Board:
    name = "encrypted" if encrypted else "plain"
    print(f"impact with the flash timing model (W25Q32JV typical): {size // 1024} KiB {name}, "
          f"{rounds} interleaved rounds of {len(BOARD_MODES)} modes...", flush=True)
    runs: dict[str, list[Run]] = {label: [] for label, _, _ in BOARD_MODES}
    with tempfile.TemporaryDirectory() as tmp:
        rig = make_rig(Path(tmp), encrypted, size)
        try:
            last = 0.0
            for i in range(rounds):
                k = i % len(BOARD_MODES)
                for label, mode, opts in BOARD_MODES[k:] + BOARD_MODES[:k]:
                    _config(rig, opts)
                    if mode == "idle" and not last:
                        continue  # no async length yet: this round's idle comes after
                    run = impact(rig, mode, max(int(last), 50), env=TIMING_ENV)
                    if label == "async":
                        last = run.ms
                    runs[label].append(run)
                if len(runs["idle"]) < i + 1:
                    _config(rig, {})
                    runs["idle"].append(impact(rig, "idle", int(last), env=TIMING_ENV))
        finally:
            rig.server.stop()
    return Board(size, runs)


def board_kept(b: Board, label: str) -> list[float]:
    return [r.tick_rate / i.tick_rate for r, i in zip(b.runs[label], b.runs["idle"], strict=True)]


def board_figures(b: Board) -> dict[str, Any]:
    out: dict[str, Any] = {"board_model_payload_bytes": b.size}
    for label, mode, opts in BOARD_MODES:
        key = "board_model_" + ("_".join([mode] + [f"{k}_{v}" for k, v in opts.items()]))
        runs = b.runs[label]
        out[key + "_max_stall_ms"] = _med([r.max_stall_ms for r in runs])
        if mode != "idle":
            out[key + "_update_ms"] = _med([r.ms for r in runs], 1)
            out[key + "_ticks_kept_ratio"] = _med(board_kept(b, label))
    blocks = [r.block_ms() for r in b.runs["blocking"]]
    out["board_model_block_ms"] = _med(blocks)
    out["board_model_async_max_stall_over_block"] = _med(
        [r.max_stall_ms / k for r, k in zip(b.runs["async"], blocks, strict=True)])
    return out


def board_table(b: Board) -> str:
    rounds = len(b.runs["async"])
    async_ms = statistics.median(r.ms for r in b.runs["async"])
    lines = [
        f"## What a real board adds: the simulator's flash timing model "
        f"(MPOTA_SIM_FLASH_TIMING=datasheet: W25Q32JV typical, sector erase 45 ms, page "
        f"program 0.4 ms), {b.size // 1024} KiB encrypted ({rounds} interleaved rounds; "
        "median (min / max))",
        "",
        "| agent | update ms | vs async | longest gap between ticks, ms | ticks kept vs idle "
        "| where the longest gap was (rounds) |",
        "|---|---|---|---|---|---|",
    ]
    for label, mode, _ in BOARD_MODES:
        runs = b.runs[label]
        if mode == "idle":
            lines.append(f"| idle (no update) | - | - "
                         f"| {_fmt([r.max_stall_ms for r in runs])} | 1 (the reference) | - |")
            continue
        where: dict[str, int] = {}
        for r in runs:
            phase = r.where(*r.max_stall())
            where[phase] = where.get(phase, 0) + 1
        lines.append(
            f"| {label} | {_fmt([r.ms for r in runs], '', 0)} "
            f"| {statistics.median(r.ms for r in runs) / async_ms:.2f}x "
            f"| {_fmt([r.max_stall_ms for r in runs])} | {_fmt(board_kept(b, label), '', 2)} "
            f"| {'; '.join(f'{k}: {v}' for k, v in sorted(where.items(), key=lambda kv: -kv[1]))}"
            " |")
    blocks = [r.block_ms() for r in b.runs["blocking"]]
    lines += ["", f"One 4 KiB block (blocking run, as above): {_fmt(blocks, ' ms')}; the model's "
              "erase + 16 pages alone is 51.4 ms, and on a board it is one C call "
              "(esp32.Partition.writeblocks) no driver can cut short: the floor of the "
              "longest stall (400 ms + 16 x 3 ms with the datasheet's worst case, "
              "MPOTA_SIM_FLASH_TIMING=max)."]
    return "\n".join(lines)


def run(rounds: int = 15, size: int = 1536 * 1024,
        board_rounds: int = 3) -> tuple[str, dict[str, Any]]:
    plain = measure(False, rounds, size)
    enc = measure(True, rounds, size)
    text = table(plain, enc)
    found = figures(plain, enc)
    if board_rounds:
        b = measure_board(board_rounds)
        text += "\n\n" + board_table(b)
        found.update(board_figures(b))
    return text, found
