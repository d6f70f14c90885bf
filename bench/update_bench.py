"""A 1.5 MB update over HTTPS on the simulated board vs a bare TLS download of
the same bytes in the same interpreter; the smallest heap the update runs in;
flash erases per block."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mpota_host import keys, provision, release
from mpota_host.firmware import write_image
from mpota_host.server.app import start_server
from mpota_host.server.store import add_device
from mpota_host.sim.harness import AGENT_MODULES, SimBoard
from mpota_host.sim.runner import REPO_DIR

SIZE = 1536 * 1024
BOARD = REPO_DIR / "boards" / "esp32-generic-4mb"
SLOT1, SLOT_SIZE = 0x190000, 0x180000

# Runs on the board: the agent's install (check, verify manifest, download,
# write, read back) timed, then a plain TLS GET of the same payload.
DEVICE_SCRIPT = """
import time, socket, tls, gc
import mpota
a = mpota.get_agent()
t0 = time.ticks_ms()
offer = a.check()
a.install(offer)
update_ms = time.ticks_diff(time.ticks_ms(), t0)
offer = a.check(skip_rejected=False)
host, port = "localhost", int(a.cfg["server"].rsplit(":", 1)[1])
t0 = time.ticks_ms()
ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
ctx.verify_mode = tls.CERT_REQUIRED
ctx.load_verify_locations(a.cfg["ca_der"])
s = socket.socket()
s.connect(socket.getaddrinfo(host, port)[0][-1])
s = ctx.wrap_socket(s, server_hostname=host)
s.write(("GET %s HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n" % (offer["payload_url"], host)).encode())
length = 0
while True:
    line = s.readline()
    if line.lower().startswith(b"content-length:"):
        length = int(line.split(b":")[1])
    if line in (b"\\r\\n", b""):
        break
buf = bytearray(4096)
got = 0
while got < length:
    n = s.readinto(buf)
    if not n:
        break
    got += n
s.close()
bare_ms = time.ticks_diff(time.ticks_ms(), t0)
print("BENCH", update_ms, bare_ms, got)
"""

INSTALL_ONLY = """
import mpota
a = mpota.get_agent()
a.install(a.check())
print("INSTALLED")
"""


def _setup(work: Path, encrypted: bool) -> tuple[Any, SimBoard]:
    pair = keys.generate(work / "keys")
    fw1, fw2 = work / "v1.bin", work / "v2.bin"
    write_image(fw1, "1.0.0", "healthy", 64 * 1024)
    write_image(fw2, "2.0.0", "healthy", SIZE)
    releases = work / "releases"
    releases.mkdir()
    enc = keys.generate(work / "keys", name="encryption") if encrypted else None
    release.make_release(fw2, releases / "v2", "esp32-generic-4mb", "2.0.0", 2,
                         keys.load_private(pair.private),
                         encrypt_for=[keys.load_public(enc.public)] if enc else None)
    server = start_server(releases, work / "server")
    token = add_device(server.data, "bench")
    board = SimBoard.create(BOARD, fw1, work / "bench.flash")
    config = {"server": server.url, "ca": "ca.der", "device_id": "bench", "token": token,
              "board": "esp32-generic-4mb", "version": "1.0.0", "version_code": 1,
              "trusted_keys": ["signing.pub.pem"]}
    board.install_agent(config, {"ca.der": server.ca_der.read_bytes(),
                                 "signing.pub.pem": pair.public.read_bytes()},
                        main_py="")
    if enc:
        provision.install_fleet_key(board.exec, enc.private)
    board.boot(max_boots=1)
    return server, board


def _fresh(board: SimBoard) -> None:
    (board.fs / "mpota_state.json").unlink(missing_ok=True)


def _min_heap(board: SimBoard, script: Path, frozen: tuple[str, ...]) -> int:
    lo, hi = 8, 256  # KiB
    while lo < hi:
        mid = (lo + hi) // 2
        _fresh(board)
        run = board.run(script, heapsize=f"{mid}K", frozen=frozen, timeout=120)
        if "INSTALLED" in run.output:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _measure(encrypted: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server, board = _setup(work, encrypted)
        try:
            script = work / "bench_update.py"
            script.write_text(DEVICE_SCRIPT)
            board.clear_counters()
            result = board.run(script, heapsize="256K", frozen=AGENT_MODULES, timeout=300)
            line = next((ln for ln in result.output.splitlines() if ln.startswith("BENCH")), None)
            if line is None:
                raise SystemExit(f"update benchmark failed:\n{result.output}")
            update_ms, bare_ms, _ = (int(x) for x in line.split()[1:])
            counters = board.counters()
            erases = [counters.sector(SLOT1 + i * 4096)[0] for i in range(SIZE // 4096)]
            install = work / "bench_install.py"
            install.write_text(INSTALL_ONLY)
            frozen_kib = _min_heap(board, install, AGENT_MODULES)
            mpy_kib = _min_heap(board, install, ())
        finally:
            server.stop()
    return {"update_ms": update_ms, "bare_ms": bare_ms, "heap_frozen_kib": frozen_kib,
            "heap_mpy_kib": mpy_kib, "max_erases": max(erases),
            "mean_erases": sum(erases) / len(erases)}


def run() -> str:
    print("update: 1.5 MB over HTTPS on the simulated board, plain then encrypted...",
          flush=True)
    plain = _measure(encrypted=False)
    enc = _measure(encrypted=True)
    rows = []
    for name, m in (("plain", plain), ("encrypted", enc)):
        rows.append(f"| {name} release: check, verify, ranged download, write, read back | "
                    f"{m['update_ms']} ms | {m['update_ms'] / m['bare_ms']:.2f}x | "
                    f"{m['bare_ms']} ms | {m['heap_frozen_kib']} / {m['heap_mpy_kib']} KiB | "
                    f"{m['max_erases']} |")
    return "\n".join([
        "## 1.5 MB update over HTTPS on the simulated board (one run)",
        "",
        "| install | time | vs bare TLS GET | bare TLS GET (same bytes, same interpreter) "
        "| smallest heap: frozen / .mpy | max erases per block |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"encrypted vs plain install: {enc['update_ms'] / plain['update_ms']:.2f}x",
        json.dumps({"plain": plain, "encrypted": enc}),
    ])
