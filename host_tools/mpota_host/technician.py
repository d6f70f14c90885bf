"""Field-technician jobs over a USB serial cable, through mpremote's transport
used as a library: status, provision, trigger and push (offline update).

Everything runs as MicroPython code on the board through the raw REPL; the
board's answers come back as one ``MPOTA-JSON {...}`` line that is parsed here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from . import keys, provision, release
from .errors import MpotaError
from .sim import runner

PUSH_CHUNK = 4096
_MARK = "MPOTA-JSON "


class BoardLinkError(MpotaError):
    """The board could not be reached, or it answered with an error."""


class NoAgentError(BoardLinkError):
    """The board has no mpota agent (run mpota provision)."""


class VersionMismatch(BoardLinkError):
    """The board's MicroPython reads another bytecode version than mpy-cross writes."""


class _Rebooting(Exception):
    """The board announced a reset: its raw REPL session is over."""


class BoardLink:
    """A raw-REPL session with one board."""

    def __init__(self, port: str, baud: int = 115200) -> None:
        self.port = port
        try:
            self.transport = SerialTransport(port, baudrate=baud)
            self.transport.enter_raw_repl(soft_reset=False)
        except (TransportError, OSError) as e:
            raise BoardLinkError(
                f"cannot talk to a MicroPython board on {port}: {e}. Check the cable and the "
                "port name, and that no other program (a terminal, Thonny) holds the port."
            ) from e

    def close(self) -> None:
        try:
            self.transport.exit_raw_repl()
            self.transport.close()
        except (OSError, TransportError):
            pass  # the cable may already be gone

    def exec(self, code: str, timeout: float = 60,
             stream: Callable[[bytes], None] | None = None) -> str:
        """Run code on the board; its printed output. Errors name the device traceback."""
        try:
            self.transport.exec_raw_no_follow(code)
            out, err = self.transport.follow(timeout, stream)
        except (TransportError, OSError) as e:
            raise BoardLinkError(f"lost the board on {self.port}: {e}") from e
        if err:
            text = err.decode(errors="replace").strip()
            if "no module named 'mpota'" in text:
                raise NoAgentError("the board has no mpota agent: run 'mpota provision' first")
            # the agent's own lines name the failure's code: "mpota: FAILED (bad-signature) ..."
            said = [ln for ln in out.decode(errors="replace").splitlines()
                    if ln.startswith("mpota: ")]
            raise BoardLinkError("the board reported an error:\n"
                                 + "".join(ln + "\n" for ln in said[-3:]) + text)
        return str(out.decode(errors="replace"))

    def run_until_reboot(self, code: str, out: Callable[[str], None],
                         timeout: float = 3600) -> list[str]:
        """Run code whose end may be a reset of the board; stream its lines to out.

        Returns the lines seen; stops when the board says it reboots (the raw
        REPL session ends with the reset)."""
        seen: list[str] = []
        buffer = bytearray()

        def consume(data: bytes) -> None:
            buffer.extend(data)
            while b"\n" in buffer:
                line, _, rest = bytes(buffer).partition(b"\n")
                buffer[:] = rest
                text = line.decode(errors="replace").rstrip("\r")
                seen.append(text)
                if not text.startswith(_MARK):
                    out(text)
                if "rebooting into" in text:
                    raise _Rebooting

        try:
            self.transport.exec_raw_no_follow(code)
            self.transport.follow(timeout, consume)
        except _Rebooting:
            pass
        except (TransportError, OSError) as e:
            raise BoardLinkError(f"lost the board on {self.port}: {e}") from e
        return seen

    def call(self, code: str, timeout: float = 60) -> Any:
        """Run code that prints one MPOTA-JSON line; the parsed value."""
        out = self.exec(code, timeout)
        for line in out.splitlines():
            if line.startswith(_MARK):
                return json.loads(line[len(_MARK):])
        raise BoardLinkError(f"the board did not answer as expected:\n{out[-800:]}")

    def interrupt(self) -> None:
        self.transport.serial.write(b"\r\x03")


@contextmanager
def connect(port: str, baud: int = 115200) -> Iterator[BoardLink]:
    link = BoardLink(port, baud)
    try:
        yield link
    finally:
        link.close()


def _json_line(expr: str) -> str:
    return f"import json\nprint('{_MARK}' + json.dumps({expr}))\n"


# status


STATUS_CODE = """
import sys, gc, json, esp32
gc.collect()
info = {"micropython": sys.version, "mpy": sys.implementation._mpy, "free_heap": gc.mem_free()}
try:
    import mpota
    info["agent"] = mpota.__version__
except ImportError:
    info["agent"] = None
run = esp32.Partition(esp32.Partition.RUNNING)
info["running"] = run.info()[4]
info["next"] = run.get_next_update().info()[4]
info["boot"] = esp32.Partition(esp32.Partition.BOOT).info()[4]
parts = esp32.Partition.find(esp32.Partition.TYPE_DATA, 0)
ota = []
if parts:
    import struct, binascii
    raw = bytearray(32)
    for i in range(2):
        parts[0].readblocks(i, raw)
        seq, _, state, crc = struct.unpack("<I20sII", raw)
        ok = crc == binascii.crc32(struct.pack("<I", seq), 0xFFFFFFFF) & 0xFFFFFFFF
        ota.append([seq, state, ok])
info["otadata"] = ota
if info["agent"]:
    try:
        a = mpota.get_agent()
        version, code = a.running_version()
        info.update(version=version, version_code=code, state=a.st.name,
                    last_result=a.st.get("last_result"), written=a.st.get("written", 0))
    except Exception as e:
        info["agent_error"] = "%s: %s" % (getattr(e, "code", e.__class__.__name__), e)
print("MPOTA-JSON " + json.dumps(info))
"""
_STATES = {0: "NEW", 1: "PENDING_VERIFY", 2: "VALID", 3: "INVALID", 4: "ABORTED",
           0xFFFFFFFF: "UNDEFINED"}


def board_status(link: BoardLink) -> dict[str, Any]:
    info: dict[str, Any] = link.call(STATUS_CODE)
    info["otadata"] = [
        {"seq": seq, "state": _STATES.get(state, hex(state)), "crc_ok": ok}
        for seq, state, ok in info["otadata"]
    ]
    return info


# provisioning


@dataclass
class ProvisionConfig:
    """What `mpota provision --config FILE` reads (JSON).

    ``server``, ``device_id`` and ``token`` go together: without them the board
    updates only from release URLs (``mpota.update(URL)``, ``trigger --release-url``,
    ``push``)."""

    board: str
    ca: Path
    trusted_keys: list[Path]
    server: str | None = None
    device_id: str | None = None
    token: str | None = None
    version: str = "0"
    version_code: int = 0
    chip_id: int = 0
    wifi: dict[str, str] | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)
    encryption_key: Path | None = None  # a fleet key (encryption.pem) to install in NVS

    @classmethod
    def load(cls, path: Path) -> ProvisionConfig:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise MpotaError(f"cannot read provisioning config {path}: {e}") from e
        base = path.parent

        def rel(p: str) -> Path:
            return (base / p) if not Path(p).is_absolute() else Path(p)

        try:
            config = cls(
                server=data.get("server"), device_id=data.get("device_id"),
                token=data.get("token"), board=data["board"], ca=rel(data["ca"]),
                trusted_keys=[rel(k) for k in data["trusted_keys"]],
                version=data.get("version", "0"), version_code=data.get("version_code", 0),
                chip_id=data.get("chip_id", 0), wifi=data.get("wifi"),
                policy=data.get("policy", {}), health=data.get("health", {}),
                encryption_key=rel(data["encryption_key"]) if data.get("encryption_key") else None,
            )
        except (KeyError, TypeError) as e:
            raise MpotaError(f"{path}: missing or wrong field {e}; see README 'For field "
                             "technicians' for the format") from e
        given = [name for name in ("server", "device_id", "token") if data.get(name)]
        if given and len(given) != 3:
            missing = sorted({"server", "device_id", "token"} - set(given))
            raise MpotaError(f"{path}: {', '.join(given)} given without {', '.join(missing)}: "
                             "an mpota server needs all three (or none, for release URLs only)")
        return config

    def device_files(self) -> dict[str, bytes]:
        """The files the board's filesystem gets (paths on the board)."""
        ca_name, ca_bytes = _ca_file(self.ca)
        files = {ca_name: ca_bytes}
        names = []
        for i, key in enumerate(self.trusted_keys):
            name = f"mpota-key{i}.pub.pem"
            files[name] = key.read_bytes()
            names.append(name)
        cfg: dict[str, Any] = {
            "ca": ca_name, "board": self.board, "chip_id": self.chip_id,
            "version": self.version, "version_code": self.version_code,
            "trusted_keys": names, "policy": self.policy, "health": self.health,
        }
        if self.server:
            cfg.update(server=self.server, device_id=self.device_id, token=self.token)
        if self.wifi:
            cfg["wifi"] = self.wifi
        files["mpota.json"] = json.dumps(cfg, indent=1, sort_keys=True).encode()
        return files


def _ca_file(path: Path) -> tuple[str, bytes]:
    """(name on the board, bytes) of the CA file: PEM (one CA or a bundle) or DER,
    checked here so a damaged file is named before anything is written."""
    from cryptography import x509

    try:
        data = path.read_bytes()
        if b"-----BEGIN" in data:
            if not 1 <= len(x509.load_pem_x509_certificates(data)) <= 8:
                raise ValueError("the agent takes 1 to 8 CA certificates")
            return "mpota-ca.pem", data
        x509.load_der_x509_certificate(data)
        return "mpota-ca.der", data
    except (OSError, ValueError) as e:
        raise MpotaError(f"CA file {path}: {e}; give the CA certificate your server's "
                         "certificate chains to, as PEM (one or a bundle) or DER") from e


def mpy_cross_version() -> tuple[int, int]:
    """The bytecode version this mpy-cross writes (6, 3)."""
    out = runner.mpy_cross_version()
    match = re.search(r"mpy v(\d+)\.(\d+)", out)
    if match is None:
        raise MpotaError(f"cannot read mpy-cross's bytecode version from {out!r}")
    return int(match.group(1)), int(match.group(2))


def agent_files() -> dict[str, bytes]:
    """The compiled agent as the board gets it ({'lib/mpota/x.mpy': bytes}).

    Raises an MpotaError (before anything touches a board) when the agent's
    sources are not installed or mpy-cross is missing: the agent is always
    installed compiled, as its heap budget is measured that way."""
    files = {f"lib/mpota/{p.name}": p.read_bytes()
             for p in sorted((runner.compiled_agent() / "mpota").glob("*.mpy"))}
    if "lib/mpota/__init__.mpy" not in files:
        raise MpotaError("the compiled mpota agent is incomplete (no __init__.mpy): "
                         "reinstall mpota ('pip install --force-reinstall mpota')")
    return files


@dataclass
class ProvisionReport:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    key_id: str | None = None


HASHES_CODE = """
import binascii, hashlib, json
def digest(path):
    try:
        with open(path, "rb") as f:
            return binascii.hexlify(hashlib.sha256(f.read()).digest()).decode()
    except OSError:
        return None
print("MPOTA-JSON " + json.dumps({p: digest(p) for p in %r}))
"""
KEY_ID_CODE = """
import esp32, json
from mpota import keys
buf = bytearray(65)
try:
    kid = keys.key_id(bytes(buf[:esp32.NVS("mpota").get_blob("enc_pub", buf)]))
except OSError:
    kid = None
print("MPOTA-JSON " + json.dumps(kid))
"""
HOOK_BOOT = "import mpota\nmpota.boot()\n"
HOOK_MAIN = "import mpota\nmpota.probation()\nmpota.poll()\n"


def provision_board(link: BoardLink, config: ProvisionConfig, hooks: bool = False,
                    progress: Callable[[str], None] = print) -> ProvisionReport:
    """Install the compiled agent, its config and keys; idempotent."""
    files = agent_files()
    mpy = link.call(_json_line("__import__('sys').implementation._mpy"))
    board_version = (mpy & 0xFF, (mpy >> 8) & 3)
    ours = mpy_cross_version()
    if board_version != ours:
        raise VersionMismatch(
            f"the board's MicroPython reads .mpy v{board_version[0]}.{board_version[1]}, "
            f"this mpy-cross writes v{ours[0]}.{ours[1]}: flash a MicroPython that matches "
            "(1.23 or later reads v6.3), or install the matching mpy-cross"
        )
    files.update(config.device_files())
    if hooks:
        files.update({"boot.py": HOOK_BOOT.encode(), "main.py": HOOK_MAIN.encode()})
    have = link.call(HASHES_CODE % (sorted(files),))
    report = ProvisionReport()
    link.exec("import os\nfor d in ('lib', 'lib/mpota'):\n    try:\n        os.mkdir(d)\n"
              "    except OSError:\n        pass\n")
    for name, data in files.items():
        if have.get(name) == hashlib.sha256(data).hexdigest():
            report.unchanged.append(name)
            continue
        progress(f"  writing {name} ({len(data)} bytes)")
        link.transport.fs_writefile(name, data)
        report.written.append(name)
    if config.encryption_key is not None:
        wanted = keys.key_id(keys.load_private(config.encryption_key).public_key())
        current = link.call(KEY_ID_CODE)
        if current == wanted:
            report.unchanged.append("nvs:enc_key")
        else:
            provision.install_fleet_key(lambda code: link.exec(code), config.encryption_key)
            report.written.append("nvs:enc_key")
        report.key_id = wanted
    if report.written:
        # load the new agent: a soft reset, as mpremote does it
        link.transport.enter_raw_repl(soft_reset=True)
    return report


# trigger


def trigger_update(link: BoardLink, url: str | None, out: Callable[[str], None]) -> str:
    """Run mpota.update() on the board, streaming its output; how it ended.

    Ctrl-C interrupts the board (KeyboardInterrupt stops the download; the
    running image is untouched and a later update resumes)."""
    arg = repr(url) if url else ""
    code = f"import mpota\nr = mpota.update({arg})\nprint('{_MARK}' + repr(r))\n"
    try:
        seen = link.run_until_reboot(code, out)
    except KeyboardInterrupt:
        link.interrupt()
        with suppress(TransportError, OSError):  # whatever it printed while stopping
            link.transport.follow(10)
        out("interrupted: the board stopped the download and keeps running its image; "
            "'mpota trigger' again resumes it")
        return "INTERRUPTED"
    if any("rebooting into" in s for s in seen):
        return "REBOOTING"
    for text in seen:
        if text.startswith(_MARK):
            return text[len(_MARK):]
    return "DONE"


# push


@dataclass
class PushReport:
    version: str
    payload_bytes: int
    sent_bytes: int
    resumed_at: int
    seconds: float
    line_bytes_per_s: float

    @property
    def rate(self) -> float:
        return self.sent_bytes / self.seconds if self.seconds else 0.0


def push_release(link: BoardLink, reldir: Path, baud: int,
                 progress: Callable[[int, int], None] | None = None,
                 apply: bool = True) -> PushReport:
    """Stream a release through the raw REPL into the inactive slot, resumably.

    The board's ``P.begin`` answers the payload offset to send from: 0, or the
    last whole block on its flash; for an encrypted release 16 bytes before
    that block, so that the first chunk brings the ciphertext block CBC needs
    as its IV there."""
    raw, sig, payload = release.read_release(reldir)
    fields = json.loads(raw)
    total = payload.stat().st_size
    try:
        start_at = int(link.call(
            "import mpota.push as P\nimport json\n"
            f"print('{_MARK}' + json.dumps(P.begin({base64.b64encode(raw).decode()!r}, "
            f"{base64.b64encode(sig).decode()!r})))\n"))
    except BoardLinkError as e:
        raise BoardLinkError(f"the board refused the release: {e}") from e
    began = time.monotonic()
    offset = start_at
    with payload.open("rb") as f:
        f.seek(offset)
        while offset < total:
            data = f.read(PUSH_CHUNK)
            code = f"P.chunk({offset},{base64.b64encode(data).decode()!r})"
            link.exec(code)
            offset += len(data)
            if progress:
                progress(offset, total)
    link.exec(_json_line("P.finish()"))
    seconds = time.monotonic() - began
    # where the slot resumed: past the 16 IV bytes of an encrypted resume
    resumed_at = start_at + 16 if start_at and fields.get("encryption") else start_at
    report = PushReport(str(fields.get("version")), total, total - start_at, resumed_at,
                        seconds, baud / 10)
    if apply:
        link.run_until_reboot("import mpota\nmpota.apply()\n", lambda line: None, timeout=60)
    return report
