"""A 1.5 MB update over HTTPS on the simulated board, measured fairly.

Everything runs in the same interpreter (the unix port, one process per
measurement), against the same server, on the same simulated flash:

* R = T(check + install by the agent: ``mpota.update()`` with auto_apply off)
  / (T(bare TLS GET of the payload) + T(raw ``writeblocks`` of as many bytes
  into the same slot));
* the secure floor: GET + SHA-256 (+ AES-CBC for the encrypted release) +
  write, read-back + SHA-256, one P-256 verify; F = T(update) / T(floor);

in interleaved rounds (the order rotates every round), reported as min /
median / max of the per-round ratios.  One more update per release runs
with the simulator's event counters on (device/sim/simtrace.py; durable
operations from simpower): TLS handshakes, requests, POSTs, state-file
writes, flash erases and writes, and where the time goes, phase by phase.
The smallest heap an install runs in is searched several times (the median
is reported), plain and encrypted, as .mpy files and frozen.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import statistics
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mpota_host import keys, provision, release
from mpota_host.firmware import write_image
from mpota_host.server.app import ServerHandle, start_server
from mpota_host.server.store import add_device
from mpota_host.sim.harness import AGENT_MODULES, SimBoard
from mpota_host.sim.runner import REPO_DIR

SIZE = 1536 * 1024
QUICK_SIZE = 128 * 1024
BOARD = REPO_DIR / "boards" / "esp32-generic-4mb"
ONBOARD = Path(__file__).resolve().parent / "onboard.py"
TIMING_HEAP = "256K"  # every timed process gets the same heap
STATE_FILES = ("mpota_state.json", "mpota_state.json.tmp")


class BenchError(Exception):
    """A benchmark step failed: the message names it and shows the board's output."""


@dataclass
class Rig:
    """One server with one release and one board with the agent (as .mpy) on it."""

    name: str
    work: Path
    server: ServerHandle
    board: SimBoard
    size: int  # payload bytes
    host: str
    port: int
    path: str  # the payload's path (and query) on the server
    verify_case: tuple[str, str, str]  # public point, digest, signature (hex)
    extra: dict[str, Any] = field(default_factory=dict)

    def fresh(self) -> None:
        """Forget the last install: the next one starts from IDLE."""
        for name in STATE_FILES:
            (self.board.fs / name).unlink(missing_ok=True)


def make_rig(work: Path, encrypted: bool, size: int = SIZE) -> Rig:
    work.mkdir(parents=True, exist_ok=True)
    pair = keys.generate(work / "keys")
    fw1, fw2 = work / "v1.bin", work / "v2.bin"
    write_image(fw1, "1.0.0", "healthy", 64 * 1024)
    write_image(fw2, "2.0.0", "healthy", size)
    releases = work / "releases"
    releases.mkdir()
    enc = keys.generate(work / "keys", name="encryption") if encrypted else None
    private = keys.load_private(pair.private)
    release.make_release(fw2, releases / "v2", "esp32-generic-4mb", "2.0.0", 2, private,
                         encrypt_for=[keys.load_public(enc.public)] if enc else None)
    server = start_server(releases, work / "server")
    try:
        token = add_device(server.data, "bench")
        board = SimBoard.create(BOARD, fw1, work / "bench.flash")
        config = {"server": server.url, "ca": "ca.der", "device_id": "bench", "token": token,
                  "board": "esp32-generic-4mb", "version": "1.0.0", "version_code": 1,
                  "trusted_keys": ["signing.pub.pem"], "policy": {"auto_apply": False},
                  "wifi": {"ssid": "sim", "key": "sim-key"}}
        board.install_agent(config, {"ca.der": server.ca_der.read_bytes(),
                                     "signing.pub.pem": pair.public.read_bytes()},
                            main_py="")
        if enc:
            provision.install_fleet_key(board.exec, enc.private)
        board.boot(max_boots=1)
        offer = _offer(server, token)
        url = urlsplit(offer["payload_url"])
        path = url.path + (f"?{url.query}" if url.query else "")
        message = b"mpota secure floor"
        case = (keys.point_bytes(private.public_key()).hex(),
                hashlib.sha256(message).hexdigest(), keys.sign(private, message).hex())
        manifest = json.loads((releases / "v2" / release.MANIFEST).read_bytes())
        rig = Rig("encrypted" if encrypted else "plain", work, server, board,
                  int(manifest["payload_size"]), url.hostname or "localhost",
                  url.port or server.port, path, case)
    except BaseException:
        server.stop()
        raise
    return rig


def _offer(server: ServerHandle, token: str) -> dict[str, Any]:
    """The server's offer to a v1 device (the payload URL the agent will fetch)."""
    context = ssl.create_default_context(cadata=server.ca_der.read_bytes())
    request = urllib.request.Request(
        f"{server.url}/v1/update?board=esp32-generic-4mb&version_code=1",
        headers={"X-Device-Id": "bench", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=context, timeout=30) as r:
        offer: dict[str, Any] = json.loads(r.read())
    if not offer.get("update"):
        raise BenchError(f"the bench server offers no update: {offer}")
    if offer["payload_url"].startswith("/"):
        offer["payload_url"] = server.url + offer["payload_url"]
    return offer


def onboard(rig: Rig, args: list[str], heapsize: str = TIMING_HEAP,
            frozen: tuple[str, ...] = (), env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run bench/onboard.py on the rig's board: (milliseconds, the rest of its BENCH line)."""
    result = rig.board.run(ONBOARD, args, env=env, heapsize=heapsize, frozen=frozen,
                           timeout=300)
    for line in result.output.splitlines():
        if line.startswith("BENCH "):
            _, _, ms, *rest = line.split(" ", 3)
            return float(ms), " ".join(rest)
    raise BenchError(f"{rig.name}: onboard.py {' '.join(args[:1])} ended {result.ended}:\n"
                     f"{result.output[-3000:]}")


# the timed rounds


def _update(rig: Rig) -> float:
    rig.fresh()
    ms, detail = onboard(rig, ["update"])
    if not detail.startswith("STAGED"):
        raise BenchError(f"{rig.name}: the update did not stage: {detail}")
    return ms


def _bare(rig: Rig) -> float:
    ms, detail = onboard(rig, ["bare", rig.host, str(rig.port), rig.path])
    if int(detail) != rig.size:
        raise BenchError(f"{rig.name}: the bare GET read {detail} of {rig.size} bytes")
    return ms


def _write(rig: Rig) -> float:
    return onboard(rig, ["write", str(rig.size)])[0]


def _floor(rig: Rig) -> float:
    args = ["floor", rig.host, str(rig.port), rig.path, str(rig.size), *rig.verify_case]
    if rig.name == "encrypted":
        args.append("aes")
    ms, detail = onboard(rig, args)
    if detail.endswith("no-verify"):
        rig.extra["floor_without_verify"] = True
    return ms


def timed_rounds(rig: Rig, rounds: int) -> dict[str, list[float]]:
    """Interleaved rounds: every round runs each measurement once, in a rotating order."""
    steps: list[tuple[str, Callable[[Rig], float]]] = [
        ("update", _update), ("bare", _bare), ("write", _write), ("floor", _floor)]
    times: dict[str, list[float]] = {name: [] for name, _ in steps}
    for i in range(rounds):
        for name, fn in steps[i % len(steps):] + steps[:i % len(steps)]:
            times[name].append(fn(rig))
    times["R"] = [u / (b + w) for u, b, w in zip(times["update"], times["bare"], times["write"],
                                                     strict=True)]
    times["F"] = [u / f for u, f in zip(times["update"], times["floor"], strict=True)]
    return times


def spread(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


# events and the breakdown


def traced_update(rig: Rig) -> dict[str, Any]:
    """One update with the event counters on: its trace, durable ops and flash counts."""
    rig.fresh()
    board = rig.board
    board.clear_counters()  # (not board.trace_ops(): its log would slow the flash down)
    trace_file = rig.work / "trace.json"
    trace_file.unlink(missing_ok=True)
    # the trace's own records need room: a larger heap than the timed runs
    ms, detail = onboard(rig, ["update"], heapsize="1M",
                         env={"MPOTA_SIM_TRACE": str(trace_file)})
    if not detail.startswith("STAGED") or not trace_file.exists():
        raise BenchError(f"{rig.name}: the traced update did not stage: {detail}")
    trace: dict[str, Any] = json.loads(trace_file.read_text())
    counters = board.counters()
    trace["ms"] = ms
    trace["fs_durable_ops"] = counters.durable - counters.total  # no NVS writes in an install
    trace["flash_erases"] = sum(counters.erases)
    trace["flash_writes"] = sum(counters.writes)
    return trace


def _total(totals: dict[str, list[int]], kind: str, i: int = 0) -> int:
    return totals.get(kind, [0, 0, 0])[i]


def events(trace: dict[str, Any]) -> dict[str, Any]:
    """Event counts per update from a traced update."""
    totals = trace["totals"]
    reqs = [e[2] for e in trace["events"] if e[1] == "req"]
    posts = [r for r in reqs if r.startswith("POST")]
    payload = [r for r in reqs if r.startswith("GET") and "/v1/update" not in r]
    state_saves = sum(1 for e in trace["events"]
                      if e[1] == "fs-rename" and e[2] == "mpota_state.json")
    post_writes = _total(totals, "net-write:report")
    return {
        "tls_handshakes": _total(totals, "tls-handshake"),
        "http_requests": len(reqs),
        "payload_requests": len(payload),
        "posts": len(posts),
        "socket_writes_per_post": post_writes / len(posts) if posts else 0.0,
        "state_writes": state_saves,
        "fs_durable_ops": trace["fs_durable_ops"],
        "fs_write_calls": _total(totals, "fs-write"),
        "flash_erases": trace["flash_erases"],
        "flash_writes": trace["flash_writes"],
        "gc_collects": _total(totals, "gc"),
        "requests": reqs,
    }


def _ms(us: float) -> float:
    return us / 1000


def _delta(a: dict[str, list[int]], b: dict[str, list[int]], kind: str) -> int:
    return _total(b, kind, 1) - _total(a, kind, 1)


def breakdown(trace: dict[str, Any]) -> dict[str, Any]:
    """Where the traced update's time went: phases in order, and buckets.

    Phases are cut at events the simulator sees (requests by their path,
    file opens, the first flash read after the writes); inside a phase the
    simulator's timed calls are told apart and the rest is the agent's own
    Python (parsing, verify arithmetic, copying, json, imports)."""
    ev = trace["events"]
    end_t, totals = ev[-1][0], trace["totals"]

    def find(pred: Callable[[list[Any]], bool], after: int = 0) -> int | None:
        return next((i for i in range(after, len(ev)) if pred(ev[i])), None)

    check = find(lambda e: e[1] == "req" and "/v1/update" in e[2])
    first_payload = find(lambda e: e[1] == "req" and e[2].startswith("GET")
                         and "/v1/update" not in e[2])
    readbacks = [i for i, e in enumerate(ev) if e[1] == "readback"]
    if check is None or first_payload is None or not readbacks:
        raise BenchError("the trace lacks a check, a payload request or a read-back: "
                         + ", ".join(f"{e[1]} {e[2]}" for e in ev))
    after_check = check + 1
    b_check_read = ev[after_check][3]  # the last network read before the next event
    rb = readbacks[-1]
    after_rb = rb + 1
    cuts = [
        ("start: config, imports, first TLS handshake", 0, check),
        ("check: request and answer", check, None),
        ("manifest verify (+ content key), until the first state save", None, after_check),
        ("begin: state save (no report: the server recorded the offer)", after_check,
         first_payload),
        ("download: payload request(s), reads, flash writes, progress saves (no hashing)",
         first_payload, rb),
        ("read-back of the slot (flash reads + SHA-256)", rb, after_rb),
        ("stage: state save, STAGED report, close", after_rb, len(ev) - 1),
    ]
    kinds = sorted(totals)
    phases = []
    for name, a, b in cuts:
        ta = ev[a][0] if a is not None else b_check_read
        tb = ev[b][0] if b is not None else b_check_read
        sa = ev[a if a is not None else check][4]
        sb = ev[b if b is not None else after_check][4]
        cats = {k: _delta(sa, sb, k) for k in kinds if ":" not in k}
        if a is None or b is None:  # check and verify share their snapshots: split by wall
            cats = {k: v for k, v in cats.items()
                    if (a is None) == (k in ("fs-open", "fs-write", "fs-close", "fs-rename"))}
        cats = {k: v for k, v in cats.items() if v > 0}
        phases.append({"phase": name, "ms": _ms(tb - ta),
                       "within_ms": {k: _ms(v) for k, v in cats.items()}})
    rb_s, rb_e = ev[rb][4], ev[after_rb][4]
    readback_wall = ev[after_rb][0] - ev[rb][0]
    verify_wall = ev[after_check][0] - b_check_read

    def t(kind: str) -> int:
        return _total(totals, kind, 1)

    buckets = {
        "TLS handshakes": t("tls-handshake"),
        "check request + answer (network)": t("net-read:check") + t("net-write:check"),
        "manifest verify (+ content key)": verify_wall,
        "payload: requests and reads (network, TLS decrypt)":
            t("net-read:payload") + t("net-write:payload"),
        "flash erases + writes": t("flash-erase") + t("flash-write"),
        "read-back (flash reads + SHA-256 + loop)": readback_wall,
        # 0 since the read-back hash is the only one (kept to show it stays so)
        "SHA-256 while downloading": t("sha256") - _delta(rb_s, rb_e, "sha256"),
        "AES-CBC decrypt": t("aes"),
        "gc.collect()": t("gc"),
        "state file (open, write, close, rename)":
            t("fs-open") + t("fs-write") + t("fs-close") + t("fs-rename") + t("fs-remove"),
        "reports (POST request + answer)": t("net-read:report") + t("net-write:report"),
        "connection close": t("net-close"),
        "other flash reads": t("flash-read") - _delta(rb_s, rb_e, "flash-read"),
    }
    accounted = sum(buckets.values())
    buckets["the agent's own Python (the rest)"] = end_t - accounted
    return {"total_ms": _ms(end_t), "phases": phases,
            "buckets_ms": {k: _ms(v) for k, v in buckets.items()}}


# the smallest heap


# the smallest script that installs: onboard.py's own bytecode would take heap too
HEAP_SCRIPT = """import mpota
r = mpota.update()
print("HEAP", r.get("result") if isinstance(r, dict) else r)
"""


def _heap_ok(rig: Rig, kib: int, frozen: tuple[str, ...]) -> bool:
    rig.fresh()
    script = rig.work / "heap_update.py"
    if not script.exists():
        script.write_text(HEAP_SCRIPT)
    result = rig.board.run(script, heapsize=f"{kib}K", frozen=frozen, timeout=300)
    return "HEAP STAGED" in result.output


def min_heap(rig: Rig, frozen: tuple[str, ...], lo: int = 16, hi: int = 256) -> int:
    """Smallest -X heapsize (KiB) in which an install stages, by bisection."""
    if not _heap_ok(rig, hi, frozen):
        raise BenchError(f"{rig.name}: the install does not stage even in {hi} KiB")
    while lo < hi:
        mid = (lo + hi) // 2
        if _heap_ok(rig, mid, frozen):
            hi = mid
        else:
            lo = mid + 1
    return lo


def heap_searches(rig: Rig, runs: int) -> dict[str, list[int]]:
    """`runs` independent searches, as .mpy and frozen, each on a fresh rig (new
    keys, token, server port: the heap's layout differs a little from one
    setup to the next, as from one board to the next); the later ones start
    from a bracket around the first result (the same bisection, fewer steps)."""
    out: dict[str, list[int]] = {"mpy": [], "frozen": []}
    first: dict[str, int] = {}
    for run in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            r = rig if run == 0 else make_rig(Path(tmp), rig.name == "encrypted", rig.size)
            try:
                for kind, frozen in (("mpy", ()), ("frozen", AGENT_MODULES)):
                    if kind not in first:
                        first[kind] = min_heap(r, frozen)
                        out[kind].append(first[kind])
                        continue
                    lo = max(8, first[kind] - 16)
                    if _heap_ok(r, lo, frozen):
                        out[kind].append(min_heap(r, frozen, 8, lo))
                    else:
                        out[kind].append(min_heap(r, frozen, lo, first[kind] + 16))
            finally:
                if r is not rig:
                    r.server.stop()
    return out


# the report


@dataclass
class Measured:
    rig: str
    size: int
    times: dict[str, list[float]]
    events: dict[str, Any]
    breakdown: dict[str, Any]
    heap: dict[str, list[int]]
    floor_without_verify: bool


def measure(encrypted: bool, rounds: int, heap_runs: int, size: int) -> Measured:
    name = "encrypted" if encrypted else "plain"
    print(f"update ({name}): {size // 1024} KiB over HTTPS on the simulated board, "
          f"{rounds} interleaved rounds, {heap_runs} heap search(es)...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        rig = make_rig(Path(tmp), encrypted, size)
        try:
            times = timed_rounds(rig, rounds)
            trace = traced_update(rig)
            heap = heap_searches(rig, heap_runs) if heap_runs else {"mpy": [], "frozen": []}
        finally:
            rig.server.stop()
    return Measured(name, rig.size, times, events(trace), breakdown(trace), heap,
                    bool(rig.extra.get("floor_without_verify")))


def _fmt(values: list[float], unit: str = "", digits: int = 2) -> str:
    lo, mid, hi = spread(values)
    return f"{mid:.{digits}f}{unit} ({lo:.{digits}f} / {hi:.{digits}f})"


def _median_int(values: list[int]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def figures(plain: Measured, enc: Measured) -> dict[str, Any]:
    """The flat object written to bench/results/latest.json (update part)."""
    out: dict[str, Any] = {}
    for m, prefix in ((plain, ""), (enc, "encrypted_")):
        t = m.times
        out[f"{prefix}update_ratio_R"] = round(statistics.median(t["R"]), 3)
        out[f"{prefix}update_ratio_R_min"] = round(min(t["R"]), 3)
        out[f"{prefix}update_ratio_R_max"] = round(max(t["R"]), 3)
        out[f"{prefix}secure_floor_ratio"] = round(statistics.median(t["F"]), 3)
        out[f"{prefix}secure_floor_ratio_min"] = round(min(t["F"]), 3)
        out[f"{prefix}secure_floor_ratio_max"] = round(max(t["F"]), 3)
        for step in ("update", "bare", "write", "floor"):
            out[f"{prefix}{step}_ms"] = round(statistics.median(t[step]), 1)
        e = m.events
        out[f"{prefix}tls_handshakes_per_update"] = e["tls_handshakes"]
        out[f"{prefix}http_requests_per_update"] = e["http_requests"]
        out[f"{prefix}payload_requests_per_update"] = e["payload_requests"]
        out[f"{prefix}posts_per_update"] = e["posts"]
        out[f"{prefix}socket_writes_per_post"] = round(e["socket_writes_per_post"], 2)
        out[f"{prefix}state_writes_per_update"] = e["state_writes"]
        out[f"{prefix}fs_durable_ops_per_update"] = e["fs_durable_ops"]
        out[f"{prefix}flash_erases_per_update"] = e["flash_erases"]
        out[f"{prefix}flash_writes_per_update"] = e["flash_writes"]
        out[f"{prefix}gc_collects_per_update"] = e["gc_collects"]
    out["payload_bytes"] = plain.size
    for m in (plain, enc):
        out[f"heap_mpy_{m.rig}_kib"] = _median_int(m.heap["mpy"])
        out[f"heap_frozen_{m.rig}_kib"] = _median_int(m.heap["frozen"])
        out[f"heap_mpy_{m.rig}_runs"] = " ".join(map(str, m.heap["mpy"]))
        out[f"heap_frozen_{m.rig}_runs"] = " ".join(map(str, m.heap["frozen"]))
    return out


def table(plain: Measured, enc: Measured) -> str:
    rounds = len(plain.times["R"])
    lines = [
        f"## {plain.size / (1024 * 1024):.2f} MB update over HTTPS on the simulated board "
        f"({rounds} interleaved rounds; median (min / max))",
        "",
        "| release | check + install | bare TLS GET | raw writeblocks | secure floor "
        "| R = install / (GET + write) | install / floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in (plain, enc):
        t = m.times
        lines.append(f"| {m.rig} | {_fmt(t['update'], ' ms', 0)} | {_fmt(t['bare'], ' ms', 0)} "
                     f"| {_fmt(t['write'], ' ms', 0)} | {_fmt(t['floor'], ' ms', 0)} "
                     f"| {_fmt(t['R'])} | {_fmt(t['F'])} |")
    lines += [
        "",
        "secure floor: GET + SHA-256 (+ AES-CBC decrypt when encrypted) + write, read-back + "
        "SHA-256, one P-256 verify" + (" (WITHOUT the verify: mpota.p256 was not importable)"
                                       if plain.floor_without_verify else ""),
        "",
        "## Events per update (one traced update each)",
        "",
        "| release | TLS handshakes | HTTP requests | payload requests | POSTs "
        "| socket writes per POST | state-file writes | fs durable ops | flash erases "
        "| flash writes | gc.collect() |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in (plain, enc):
        e = m.events
        lines.append(f"| {m.rig} | {e['tls_handshakes']} | {e['http_requests']} "
                     f"| {e['payload_requests']} | {e['posts']} "
                     f"| {e['socket_writes_per_post']:.1f} | {e['state_writes']} "
                     f"| {e['fs_durable_ops']} | {e['flash_erases']} | {e['flash_writes']} "
                     f"| {e['gc_collects']} |")
    for m in (plain, enc):
        b = m.breakdown
        lines += ["", f"## Where a {m.rig} install's time goes (traced: {b['total_ms']:.0f} ms; "
                  f"untraced median {statistics.median(m.times['update']):.0f} ms)", "",
                  "| bucket | ms | share |", "|---|---|---|"]
        for name, ms in b["buckets_ms"].items():
            lines.append(f"| {name} | {ms:.1f} | {ms / b['total_ms']:.0%} |")
        lines += ["", "| phase (in order) | ms | of which (simulator-timed calls) |",
                  "|---|---|---|"]
        for p in b["phases"]:
            within = ", ".join(f"{k} {v:.1f}" for k, v in sorted(
                p["within_ms"].items(), key=lambda kv: -kv[1]) if v >= 0.05)
            lines.append(f"| {p['phase']} | {p['ms']:.1f} | {within} |")
    lines += ["", "## Smallest heap for an install (median of the searches; each search's "
              "result in brackets)", "",
              "| release | as .mpy files | frozen |", "|---|---|---|"]
    for m in (plain, enc):
        lines.append(f"| {m.rig} | {_median_int(m.heap['mpy']):.0f} KiB {m.heap['mpy']} "
                     f"| {_median_int(m.heap['frozen']):.0f} KiB {m.heap['frozen']} |")
    return "\n".join(lines)


def run(rounds: int = 15, heap_runs: int = 5, size: int = SIZE) -> tuple[str, dict[str, Any]]:
    plain = measure(False, rounds, heap_runs, size)
    enc = measure(True, rounds, heap_runs, size)
    return table(plain, enc), figures(plain, enc)
