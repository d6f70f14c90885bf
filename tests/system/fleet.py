"""A fleet on loopback: signing keys, a real HTTPS mpota server, simulated boards
running the real agent."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from helpers import BOARD_4MB
from mpota_host import keys, provision, release
from mpota_host.firmware import write_image
from mpota_host.server.app import ServerHandle, start_server
from mpota_host.server.store import add_device, reports
from mpota_host.sim.harness import SimBoard


class Fleet:
    """Keys, a release directory served over HTTPS, and devices provisioned for it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pair = keys.generate(root / "keys")
        self.key = keys.load_private(self.pair.private)
        self.releases = root / "releases"
        self.releases.mkdir()
        self.data = root / "server-data"
        self.server: ServerHandle = start_server(self.releases, self.data)
        self._ids = itertools.count(1)

    def publish(self, version: str, version_code: int, behaviour: str = "healthy",
                size: int = 64 * 1024, board: str = "esp32-generic-4mb",
                key: Any = None, name: str | None = None, **kw: Any) -> Path:
        image = self.root / f"fw-{version}-{behaviour}-{size}.bin"
        if not image.exists():
            write_image(image, version, behaviour, size)
        out = self.releases / (name or f"{board}-{version_code}")
        release.make_release(image, out, board, version, version_code, key or self.key, **kw)
        return out

    def device(self, version: str = "1.0.0", version_code: int = 1, port: int | None = None,
               config: dict[str, Any] | None = None, main_py: str | None = None,
               ca_der: bytes | None = None, board_dir: Path = BOARD_4MB,
               enc_key: Path | None = None) -> SimBoard:
        number = next(self._ids)
        device_id = f"dev{number}"
        token = add_device(self.data, device_id, board=None)
        image = self.root / f"fw-{version}-healthy-{64 * 1024}.bin"
        if not image.exists():
            write_image(image, version, "healthy", 64 * 1024)
        board = SimBoard.create(board_dir, image, self.root / f"{device_id}.flash")
        cfg: dict[str, Any] = {
            "server": f"https://localhost:{port or self.server.port}",
            "ca": "mpota-ca.der",
            "device_id": device_id,
            "token": token,
            "board": json.loads((board_dir / "board.json").read_text())["name"],
            "version": version,
            "version_code": version_code,
            "trusted_keys": ["signing.pub.pem"],
            "watchdog_ms": 5000,
            "download": {"backoff_ms": 20, "backoff_max_ms": 200, "stall_s": 5},
        }
        cfg.update(config or {})
        files = {"mpota-ca.der": ca_der or self.server.ca_der.read_bytes(),
                 "signing.pub.pem": self.pair.public.read_bytes()}
        kwargs = {"main_py": main_py} if main_py is not None else {}
        board.install_agent(cfg, files, **kwargs)
        if enc_key is not None:
            provision.install_fleet_key(board.exec, enc_key)
        return board

    def reports(self, device_id: str | None = None) -> list[dict[str, Any]]:
        return reports(self.data, device_id)

    def states(self, device_id: str) -> list[str]:
        return [r["state"] for r in self.reports(device_id)]
