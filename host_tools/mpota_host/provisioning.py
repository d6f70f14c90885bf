"""``mpota provision``: the compiled agent, its config and keys onto a board.

The whole provisioning file is checked before the port is opened: the host's
own checks (a known board, the files present, public keys only, an https
server) and then the board's ``mpota.json`` as it would be written, through
the agent's own parser (``device/mpota/config.py``, run by MicroPython's unix
port when it is installed, else by this Python): one schema for both sides.
Nothing is written on a refusal. The board's own ``boot.py``/``main.py`` are
never replaced silently (see :func:`plan_hooks`).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from . import board as boards
from . import keys, prompts, provision, resources
from .errors import MpotaError, SimulatorError, printable
from .serial_link import BoardLink, Interrupted, VersionMismatch, deferred_interrupt
from .sim import runner

# The hooks that run the agent; the only place their text is written.
HOOK_BOOT = "import mpota\nmpota.boot()\n"
HOOK_MAIN = "import mpota\nmpota.probation()\nmpota.poll()\n"
HOOKS = {"boot.py": HOOK_BOOT, "main.py": HOOK_MAIN}
_HOST_ONLY = ("ca", "trusted_keys", "encryption_key")


class ProvisionRefused(MpotaError):
    """The provisioning file or the board's files make provisioning unsafe."""


def _device_parse(cfg: dict[str, Any], where: str) -> str | None:
    """The agent's own config parser on cfg: None, or its refusal (one line)."""
    script = (f"import sys\nsys.path.insert(0, {str(resources.device_dir())!r})\n"
              "import json\nfrom mpota import config\n"
              "try:\n"
              f"    config.parse(json.loads(sys.stdin.read()), {where!r})\n"
              "    print('OK')\n"
              "except config.ConfigError as e:\n"
              "    print('REFUSED ' + str(e))\n")
    try:
        command = [runner.micropython_command(), "-c", script]
    except SimulatorError:
        command = [sys.executable, "-I", "-c", script]  # the same parser, on this Python
    try:
        proc = subprocess.run(command, input=json.dumps(cfg), capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MpotaError(f"cannot run the agent's config parser ({e}): reinstall mpota") from e
    answer = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not answer or not (
            answer[-1] == "OK" or answer[-1].startswith("REFUSED ")):
        raise MpotaError(f"the agent's config parser failed ({printable(proc.stderr[-200:])}): "
                         "reinstall mpota ('pip install --force-reinstall mpota')")
    return None if answer[-1] == "OK" else answer[-1][len("REFUSED "):]


def _public_pem(path: Path) -> bytes:
    """A trusted key's public PEM; a private key is refused (never copied)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ProvisionRefused(f"trusted key {path}: {e.strerror}; give the public key "
                               "(signing.pub.pem)") from e
    if b"PRIVATE KEY" in data:
        raise ProvisionRefused(f"trusted key {path} is a PRIVATE key: give its public half "
                               "(signing.pub.pem); a private key never goes onto a board")
    key = keys.load_public(path)
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _ca_file(path: Path) -> tuple[str, bytes]:
    """(name on the board, bytes) of the CA file: PEM (one CA or a bundle) or DER."""
    from cryptography import x509

    try:
        data = path.read_bytes()
        if b"-----BEGIN" in data:
            if not 1 <= len(x509.load_pem_x509_certificates(data)) <= 8:
                raise ValueError("the agent takes 1 to 8 CA certificates")
            return "mpota-ca.pem", data
        x509.load_der_x509_certificate(data)
        return "mpota-ca.der", data
    except OSError as e:
        raise ProvisionRefused(f"CA file {path}: {e.strerror}; give the CA certificate your "
                               "server's certificate chains to (ca.pem)") from e
    except ValueError as e:
        raise ProvisionRefused(f"CA file {path}: {e}; give the CA certificate your server's "
                               "certificate chains to, as PEM (one or a bundle) or DER") from e


@dataclass
class ProvisionConfig:
    """What ``mpota provision --config FILE`` reads (JSON), checked whole.

    ``ca``, ``trusted_keys`` and ``encryption_key`` name files (relative to the
    config file); every other field goes into the board's ``mpota.json`` as
    given, and must be one the agent knows (``device/mpota/config.py``)."""

    path: Path
    board: str
    files: dict[str, bytes]  # path on the board -> bytes, mpota.json included
    device: dict[str, Any] = field(default_factory=dict)  # mpota.json
    encryption_key: Path | None = None  # a fleet key (encryption.pem) to install in NVS

    @property
    def device_id(self) -> str | None:
        return self.device.get("device_id")

    @classmethod
    def load(cls, path: Path) -> ProvisionConfig:
        """Read and check the file; a :class:`ProvisionRefused` (one line) on any fault."""
        try:
            data = json.loads(path.read_text())
        except OSError as e:
            raise ProvisionRefused(f"cannot read provisioning config {path}: {e.strerror}") from e
        except ValueError as e:
            raise ProvisionRefused(f"{path} is not JSON ({e}); see README 'For field "
                                   "technicians' for the format") from e
        if not isinstance(data, dict):
            raise ProvisionRefused(f"{path} must hold one JSON object; see README 'For field "
                                   "technicians' for the format")
        for name in ("board", "ca", "trusted_keys"):
            if name not in data:
                raise ProvisionRefused(f"{path}: required field {name!r} is missing")
        if not isinstance(data["ca"], str) or not isinstance(data["trusted_keys"], list) or \
                not all(isinstance(k, str) for k in data["trusted_keys"]) or \
                not isinstance(data.get("encryption_key") or "", str):
            raise ProvisionRefused(f"{path}: 'ca' and 'encryption_key' are file names, "
                                   "'trusted_keys' a list of file names")
        server = data.get("server")
        if isinstance(server, str) and not server.startswith("https://"):
            raise ProvisionRefused(f"{path}: server {server!r} must be an https:// URL "
                                   "(the agent only speaks TLS)")
        given = [name for name in ("server", "device_id", "token") if data.get(name)]
        if given and len(given) != 3:
            missing = sorted({"server", "device_id", "token"} - set(given))
            raise ProvisionRefused(
                f"{path}: {', '.join(given)} given without {', '.join(missing)}: an mpota "
                "server needs all three (or none, for release URLs only)")
        if not isinstance(data["board"], str):
            raise ProvisionRefused(f"{path}: 'board' must be a board name")
        definition = boards.require(data["board"])

        def rel(p: str) -> Path:
            return path.parent / p  # an absolute p stays absolute

        ca_name, ca_bytes = _ca_file(rel(data["ca"]))
        files = {ca_name: ca_bytes}
        names = []
        for i, key in enumerate(data["trusted_keys"]):
            name = f"mpota-key{i}.pub.pem"
            files[name] = _public_pem(rel(key))
            names.append(name)
        encryption_key = rel(data["encryption_key"]) if data.get("encryption_key") else None
        if encryption_key is not None:
            # readable (asking for its passphrase in a terminal), a P-256 private key
            keys.load_private(encryption_key, ask=prompts.ask_passphrase)
        device = {k: v for k, v in data.items() if k not in _HOST_ONLY}
        device.update(ca=ca_name, trusted_keys=names)
        device.setdefault("chip_id", definition.chip_id)
        refusal = _device_parse(device, str(path))
        if refusal is not None:
            raise ProvisionRefused(refusal)
        files["mpota.json"] = json.dumps(device, indent=1, sort_keys=True).encode()
        return cls(path, data["board"], files, device, encryption_key)

    def device_files(self) -> dict[str, bytes]:
        """The files the board's filesystem gets (paths on the board)."""
        return dict(self.files)


def mpy_cross_version() -> tuple[int, int]:
    """The bytecode version this mpy-cross writes (6, 3)."""
    out = runner.mpy_cross_version()
    match = re.search(r"mpy v(\d+)\.(\d+)", out)
    if match is None:
        raise MpotaError(f"cannot read mpy-cross's bytecode version from {printable(out)}")
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


def _has_hook(text: str, hook: str) -> bool:
    lines = {ln.strip() for ln in text.splitlines()}
    return all(ln in lines for ln in hook.splitlines())


def plan_hooks(current: dict[str, bytes | None], force: bool) -> dict[str, bytes]:
    """What to write for the boot.py/main.py hooks, given the board's files.

    An absent file gets the hook; one that already runs it is left alone;
    another ``boot.py`` gets the hook's lines at its top (mpota.boot() must run
    first), its own lines kept. Another ``main.py`` is refused with the lines
    to add where its application is up, unless ``force``: then it is replaced
    and kept as ``main.py.bak``."""
    plan: dict[str, bytes] = {}
    for name, hook in HOOKS.items():
        data = current.get(name)
        if data is None:
            plan[name] = hook.encode()
            continue
        text = data.decode(errors="replace")
        if _has_hook(text, hook):
            continue
        if name == "boot.py":
            plan[name] = hook.encode() + data
        elif force:
            plan["main.py.bak"] = data
            plan[name] = hook.encode()
        else:
            lines = "; ".join(hook.strip().splitlines())
            raise ProvisionRefused(
                f"the board has its own main.py: add '{lines}' to it (probation() once the "
                "application is up, poll() now and then), or run again with --force to "
                "replace it (kept as main.py.bak); nothing was written")
    return plan


@dataclass
class ProvisionReport:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    key_id: str | None = None


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


def _write_whole(link: BoardLink, name: str, data: bytes) -> None:
    """Write name on the board through a temporary file renamed over it."""
    link.transport.fs_writefile(name + ".new", data)
    link.exec(f"import os\ntry:\n    os.rename({name + '.new'!r}, {name!r})\n"
              f"except OSError:  # FAT does not rename over a file\n"
              f"    os.remove({name!r})\n    os.rename({name + '.new'!r}, {name!r})\n")


def _read_or_none(link: BoardLink, name: str) -> bytes | None:
    return link.transport.fs_readfile(name) if link.transport.fs_exists(name) else None


def provision_board(link: BoardLink, config: ProvisionConfig, hooks: bool = False,
                    progress: Callable[[str], None] = print,
                    force: bool = False) -> ProvisionReport:
    """Install the compiled agent, its config and keys; idempotent. Everything
    that could refuse is decided before the first write."""
    files = agent_files()
    mpy = link.call("import sys, json\nprint('MPOTA-JSON ' + "
                    "json.dumps(sys.implementation._mpy))\n")
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
        files.update(plan_hooks({name: _read_or_none(link, name) for name in HOOKS}, force))
    report = ProvisionReport()
    for directory in ("lib", "lib/mpota"):
        if not link.transport.fs_exists(directory):
            link.transport.fs_mkdir(directory)
    with deferred_interrupt() as stop:
        # Ctrl-C stops between two files; each file is replaced whole (a
        # temporary file renamed over it), never left half-written
        for name, data in files.items():
            if stop.requested:
                raise Interrupted(
                    f"interrupted: {len(report.written)} files written whole, none "
                    "half-written; run the same 'mpota provision' again to finish")
            if link.transport.fs_exists(name) and \
                    link.transport.fs_hashfile(name, "sha256") == hashlib.sha256(data).digest():
                report.unchanged.append(name)
                continue
            progress(f"  writing {name} ({len(data)} bytes)")
            _write_whole(link, name, data)
            report.written.append(name)
    if config.encryption_key is not None:
        private = keys.load_private(config.encryption_key, ask=prompts.ask_passphrase)
        wanted = keys.key_id(private.public_key())
        current = link.call(KEY_ID_CODE)
        if current == wanted:
            report.unchanged.append("nvs:enc_key")
        else:
            provision.install_fleet_key(lambda code: link.exec(code), config.encryption_key)
            report.written.append("nvs:enc_key")
        report.key_id = wanted
    if report.written:
        # load the new agent: a soft reset in the raw REPL, as mpremote does it
        link.transport.enter_raw_repl(soft_reset=True, timeout_overall=link.timeout)
    return report
