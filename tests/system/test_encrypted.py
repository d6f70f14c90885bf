"""Encrypted releases end to end: host encryption, real server and TLS, the
agent decrypting while streaming on the simulated board."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fleet import Fleet
from helpers import heap_for
from mpota_host import devtls, keys, provision
from mpota_host.sim.harness import AGENT_MODULES, SimBoard
from netfaults import FaultProxy, StaticHTTPS
from test_agent import SLOT1, WIFI, agent_state, device_id, otadata_states, story

# every test here runs with the blocking agent and with the asyncio one
pytestmark = pytest.mark.usefixtures("driver")


@pytest.fixture
def enc(fleet: Fleet) -> keys.KeyPair:
    """The fleet's decryption key pair (encryption.pem / encryption.pub.pem)."""
    return keys.generate(fleet.root / "enc", name="encryption")


def publish_encrypted(fleet: Fleet, enc: keys.KeyPair, size: int = 64 * 1024,
                      version: str = "2.0.0", code: int = 2, **kw: Any) -> Path:
    return fleet.publish(version, code, size=size, encrypt_for=[keys.load_public(enc.public)],
                         **kw)


def refused(board: SimBoard, error: str) -> dict[str, Any]:
    board.clear_counters()
    records = board.boot(max_boots=2)
    assert story(records) == [("ota_0", "1.0.0", "repl")], records[0].output
    assert error in records[0].output, records[0].output
    assert otadata_states(board) == ["VALID", "UNDEFINED"]
    assert board.status()["boot_slot"] == "ota_0"
    return agent_state(board)


def resign(fleet: Fleet, rel: Path, change: Any) -> None:
    """Edit a release's manifest and sign it again with the fleet's key."""
    fields = json.loads((rel / "manifest.json").read_text())
    change(fields)
    raw = json.dumps(fields, indent=2, sort_keys=True).encode()
    (rel / "manifest.json").write_bytes(raw)
    (rel / "manifest.sig").write_bytes(keys.sign(fleet.key, raw))


@pytest.mark.parametrize("heap, frozen", [("64K", ()), ("40K", AGENT_MODULES)],
                         ids=["mpy-64K", "frozen-40K"])
def test_encrypted_update_in_a_small_heap(fleet: Fleet, enc: keys.KeyPair, heap: str,
                                          frozen: tuple[str, ...], driver: str) -> None:
    rel = publish_encrypted(fleet, enc, size=1536 * 1024)
    manifest = json.loads((rel / "manifest.json").read_text())
    assert manifest["encryption"]["recipients"][0]["key_id"] == enc.key_id
    board = fleet.device(config=WIFI, enc_key=enc.private)
    # .mpy files in 64 KiB, frozen in 40 KiB
    records = board.boot(max_boots=3, heapsize=heap_for(driver, heap), frozen=frozen)
    assert story(records) == [("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")], \
        records[0].output
    assert fleet.states(device_id(board))[-1] == "CONFIRMED"
    # the slot holds the plaintext image, byte for byte
    image = (fleet.root / "fw-2.0.0-healthy-1572864.bin").read_bytes()
    assert board.flash.read_bytes()[SLOT1 : SLOT1 + len(image)] == image


def test_payload_reveals_nothing_of_the_image(fleet: Fleet, enc: keys.KeyPair) -> None:
    rel = publish_encrypted(fleet, enc, size=128 * 1024)
    image = (fleet.root / "fw-2.0.0-healthy-131072.bin").read_bytes()
    payload = (rel / "payload").read_bytes()
    # no 64-byte run of the image: every such run contains an aligned 32-byte block
    windows = {payload[i : i + 32] for i in range(len(payload) - 31)}
    assert not any(image[i : i + 32] in windows for i in range(0, len(image) - 31, 32))
    counts = Counter(payload)
    entropy = -sum(c / len(payload) * math.log2(c / len(payload)) for c in counts.values())
    assert entropy > 7.99  # bits per byte; the image's header and descriptor are not random


def test_device_without_a_key(fleet: Fleet, enc: keys.KeyPair) -> None:
    publish_encrypted(fleet, enc)
    state = refused(fleet.device(config=WIFI), "mpota: no-decryption-key:")
    assert state["last_result"]["code"] == "no-decryption-key"


def test_device_with_another_key(fleet: Fleet, enc: keys.KeyPair) -> None:
    publish_encrypted(fleet, enc)
    board = fleet.device(config=WIFI)
    public = provision.generate_device_key(board.exec)  # a device-unique key, not a recipient
    state = refused(board, "mpota: not-a-recipient:")
    assert keys.key_id(public) in state["last_result"]["reason"]
    assert enc.key_id in state["last_result"]["reason"]


def test_device_unique_key_as_recipient(fleet: Fleet, enc: keys.KeyPair) -> None:
    board = fleet.device(config=WIFI)
    device_public = provision.generate_device_key(board.exec)
    fleet.publish("2.0.0", 2, encrypt_for=[keys.load_public(enc.public), device_public])
    assert story(board.boot(max_boots=3))[-1] == ("ota_1", "2.0.0", "repl")
    nvs = (board.sim_dir / "nvs.json").read_text()
    scalar_hex = json.loads(nvs)["mpota"]["enc_key"][1]
    logs = "".join(r["detail"] or "" for r in fleet.reports())
    assert scalar_hex not in logs  # the private key never leaves NVS


def test_tampered_ciphertext(fleet: Fleet, enc: keys.KeyPair) -> None:
    rel = publish_encrypted(fleet, enc)
    raw = bytearray((rel / "payload").read_bytes())
    raw[20000] ^= 0x01
    (rel / "payload").write_bytes(raw)
    state = refused(fleet.device(config=WIFI, enc_key=enc.private), "does not match the manifest")
    assert state["last_result"]["code"] == "image"


def test_tampered_wrapped_key(fleet: Fleet, enc: keys.KeyPair) -> None:
    rel = publish_encrypted(fleet, enc)

    def flip(fields: dict[str, Any]) -> None:
        wrapped = bytearray.fromhex(fields["encryption"]["recipients"][0]["wrapped_key"])
        wrapped[10] ^= 1
        fields["encryption"]["recipients"][0]["wrapped_key"] = wrapped.hex()

    resign(fleet, rel, flip)
    board = fleet.device(config=WIFI, enc_key=enc.private)
    state = refused(board, "mpota: key-unwrap:")
    assert state["last_result"]["code"] == "key-unwrap"
    assert board.counters().in_range(SLOT1, 0x180000) == (0, 0)


def test_truncated_payload(fleet: Fleet, enc: keys.KeyPair) -> None:
    # mpota serve notices a payload that no longer matches its manifest and stops
    # offering it; a plain web server (here: one that also ignores Range) does not
    rel = publish_encrypted(fleet, enc, name="truncated")
    (rel / "payload").write_bytes((rel / "payload").read_bytes()[:-4096])
    tls = devtls.DevTLS(fleet.data / "tls")
    with StaticHTTPS(fleet.releases, tls.cert, tls.key) as static:
        main = ("import mpota\n"
                f"print('RESULT', mpota.update('https://localhost:{static.port}/truncated/'))\n")
        board = fleet.device(config=WIFI, enc_key=enc.private, main_py=main)
        refused(board, "server sends 61440 bytes, the manifest says 65536")


def test_manifest_says_encrypted_but_payload_is_plain(fleet: Fleet, enc: keys.KeyPair) -> None:
    rel = publish_encrypted(fleet, enc)
    image = (fleet.root / "fw-2.0.0-healthy-65536.bin").read_bytes()
    (rel / "payload").write_bytes(image)

    def plain_payload(fields: dict[str, Any]) -> None:
        fields["payload_sha256"] = fields["sha256"]

    resign(fleet, rel, plain_payload)
    refused(fleet.device(config=WIFI, enc_key=enc.private),
            "wrong content key or not encrypted")


def test_manifest_says_plain_but_payload_is_encrypted(fleet: Fleet, enc: keys.KeyPair) -> None:
    rel = publish_encrypted(fleet, enc)

    def plain(fields: dict[str, Any]) -> None:
        fields["encryption"] = None
        fields["payload_sha256"] = fields["sha256"]

    resign(fleet, rel, plain)
    refused(fleet.device(config=WIFI, enc_key=enc.private),
            "encrypted, or not an app image, while the manifest says plain")


def test_resume_mid_ciphertext_after_many_drops(fleet: Fleet, enc: keys.KeyPair) -> None:
    size = 512 * 1024
    publish_encrypted(fleet, enc, size=size)
    rng = random.Random(11)
    cuts: list[int | None] = [rng.randrange(20_000, 120_000) for _ in range(10)]
    with FaultProxy(fleet.server.port, cuts) as proxy:
        board = fleet.device(port=proxy.port, enc_key=enc.private,
                             config=WIFI | {"health": {"server": False},
                                            "download": {"window": 32768, "backoff_ms": 10}})
        records = board.boot(max_boots=3)
        assert proxy.cut_count >= 6
    assert story(records) == [("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")], \
        records[0].output
    image = (fleet.root / f"fw-2.0.0-healthy-{size}.bin").read_bytes()
    assert board.flash.read_bytes()[SLOT1 : SLOT1 + len(image)] == image


def test_resume_mid_ciphertext_after_a_reset(fleet: Fleet, enc: keys.KeyPair) -> None:
    size = 256 * 1024
    publish_encrypted(fleet, enc, size=size)
    with FaultProxy(fleet.server.port, stall_after=150_000) as proxy:
        board = fleet.device(port=proxy.port, enc_key=enc.private, config=WIFI | {
            "health": {"server": False},
            "download": {"stall_s": 1, "retries": 1, "backoff_ms": 10, "window": 16384}})
        board.boot(max_boots=1)
        written = agent_state(board)["written"]
        assert 0 < written < size
        proxy.stall_after = None
        records = board.boot(max_boots=3)
    assert story(records)[-1] == ("ota_1", "2.0.0", "repl"), records[0].output
    image = (fleet.root / f"fw-2.0.0-healthy-{size}.bin").read_bytes()
    assert board.flash.read_bytes()[SLOT1 : SLOT1 + len(image)] == image
