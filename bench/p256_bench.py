"""ECDSA P-256 verification: mpota's verifier on the unix port vs a naive
double-and-add reference in the same interpreter, vs CPython's cryptography,
and the smallest heap one verify runs in."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from mpota_host import keys
from mpota_host.sim import runner

HERE = Path(__file__).resolve().parent
CASES = 8
ROUNDS = 10


def _cases(work: Path) -> tuple[Path, list[tuple[ec.EllipticCurvePublicKey, bytes, bytes]]]:
    lines, host = [], []
    for i in range(CASES):
        key = ec.generate_private_key(ec.SECP256R1())
        msg = f"mpota benchmark message {i}".encode()
        sig = keys.sign(key, msg)
        lines.append(f"{keys.point_bytes(key.public_key()).hex()} "
                     f"{hashlib.sha256(msg).hexdigest()} {sig.hex()}\n")
        host.append((key.public_key(), msg, sig))
    path = work / "cases.txt"
    path.write_text("".join(lines))
    return path, host


def _micropython(script: Path, args: list[str], heap: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MICROPYPATH=f"{runner.compiled_agent()}:{HERE}")
    return subprocess.run([runner.micropython_command(), "-X", f"heapsize={heap}", str(script),
                           *args], capture_output=True, text=True, env=env, timeout=600)


def _cryptography_us(host: list[tuple[ec.EllipticCurvePublicKey, bytes, bytes]]) -> float:
    ders = [(pub, msg, encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                            int.from_bytes(sig[32:], "big")))
            for pub, msg, sig in host]
    start = time.perf_counter()
    for _ in range(ROUNDS * 10):
        for pub, msg, der in ders:
            pub.verify(der, msg, ec.ECDSA(hashes.SHA256()))
    return (time.perf_counter() - start) * 1e6 / (ROUNDS * 10 * len(ders))


def _min_heap(work: Path, case_line: str) -> int:
    """Smallest -X heapsize (bytes, 1 KiB steps) in which import + one verify
    (driven by mpota.drive, the package loaded as on the device) runs."""
    pub, digest, sig = case_line.split()
    script = work / "one_verify.py"
    script.write_text(
        "import binascii, mpota\nfrom mpota import p256\n"
        f"q = p256.decode_point(binascii.unhexlify({pub!r}))\n"
        f"ok = mpota.drive(p256.verify(q, binascii.unhexlify({digest!r}), "
        f"binascii.unhexlify({sig!r})))\n"
        "assert ok\n")
    lo, hi = 4, 64  # KiB
    while lo < hi:
        mid = (lo + hi) // 2
        if _micropython(script, [], f"{mid}K").returncode == 0:
            hi = mid
        else:
            lo = mid + 1
    return lo * 1024


def run() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path, host = _cases(work)
        print(f"p256: {CASES} signatures x {ROUNDS} rounds on the unix port...", flush=True)
        proc = _micropython(HERE / "p256_device.py", [str(path), str(ROUNDS)], "256K")
        if proc.returncode != 0:
            raise SystemExit(f"device benchmark failed:\n{proc.stdout}{proc.stderr}")
        device = json.loads(proc.stdout.strip().splitlines()[-1])
        crypto = _cryptography_us(host)
        heap = _min_heap(work, path.read_text().splitlines()[0])
    fast, naive = device["fast_us"], device["naive_us"]
    return "\n".join([
        "## ECDSA P-256 verify (one run; ratios are within this run)",
        "",
        "| verifier | time per verify | inversions | vs mpota |",
        "|---|---|---|---|",
        f"| mpota p256 (unix port) | {fast / 1000:.2f} ms | "
        f"{device['fast_inversions']:.0f} | 1.00 |",
        f"| naive double-and-add (unix port) | {naive / 1000:.2f} ms | "
        f"{device['naive_inversions']:.0f} | {naive / fast:.2f}x slower |",
        f"| CPython cryptography (OpenSSL) | {crypto / 1000:.3f} ms | - | "
        f"{fast / crypto:.0f}x faster |",
        "",
        f"speed-up over naive: {naive / fast:.2f}x; smallest heap for import + one verify: "
        f"{heap // 1024} KiB (-X heapsize)",
        f"ECDH (x of d*Q, one affine conversion) on the unix port: "
        f"{device['ecdh_us'] / 1000:.2f} ms",
        f"the verify runs as {device['slices']:.0f} steps (pauses in the multiply and after "
        f"the inversion): longest step "
        f"{device['slice_max_us'] / 1000:.2f} ms, median {device['slice_median_us'] / 1000:.2f} "
        "ms: the most an asyncio application waits on it",
    ])
