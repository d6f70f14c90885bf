"""Real services the tests run (nginx today; mosquitto, postgresql, chromium later).

Policy: a test that needs a service calls ``require_service(name)``, starts the
service itself on 127.0.0.1 and stops it. Where the service is not installed:

* on a contributor's machine the test SKIPS with a one-line reason, and the end
  of the pytest run lists the services that were missing (tests/conftest.py);
* under CI (``CI=true``) a missing service is a FAILURE, never a skip.

``make test`` runs ``python tests/services.py install`` first, which installs the
missing services' OS packages where it can (Debian or Ubuntu, as root) and
otherwise says what to install; ``.ci/run`` runs ``install --required``, which
fails when a service cannot be installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Service:
    """A program the tests run, and the OS packages that provide it."""

    name: str
    binary: str
    packages: tuple[str, ...]  # Debian package names, the first one that exists is installed


SERVICES: dict[str, Service] = {
    s.name: s for s in (
        # "nginx" is the Debian package with the binary; older releases name it
        # nginx-light (a small build with everything the interop suite uses)
        Service("nginx", "nginx", ("nginx", "nginx-light")),
    )
}

# daemons live in sbin, which a non-root PATH often lacks
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")

# services a test needed but did not find, with the reason (for the run's summary)
missing: dict[str, str] = {}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def find(name: str) -> Path | None:
    """The service's program on this machine, or None."""
    service = SERVICES[name]
    path = os.environ.get("PATH", os.defpath) + os.pathsep + os.pathsep.join(_SBIN)
    found = shutil.which(service.binary, path=path)
    return Path(found) if found else None


def _how_to_install(service: Service) -> str:
    return (f"install the Debian package {service.packages[0]} "
            f"(as root: apt-get install {service.packages[0]}, or run make test as root)")


def require_service(name: str) -> Path:
    """The path of the service's program; skips the test when it is missing
    (fails it under CI)."""
    import pytest  # not at the top: `python3 tests/services.py install` runs before the venv

    path = find(name)
    if path is not None:
        return path
    service = SERVICES[name]
    reason = f"{name} not found on this machine: {_how_to_install(service)}"
    if in_ci():
        pytest.fail(f"CI=true and a service the tests need is missing: {reason}", pytrace=False)
    missing[name] = reason
    pytest.skip(reason)


def summary() -> list[str]:
    """Lines for the end of the pytest run: the services whose tests were skipped."""
    return [f"{name}: {reason}" for name, reason in sorted(missing.items())]


# installing


def _run(cmd: list[str]) -> bool:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print("services: " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, env=env, check=False).returncode == 0


def _package_exists(package: str) -> bool:
    proc = subprocess.run(["apt-cache", "show", package], capture_output=True, check=False)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def install(required: bool) -> int:
    """Install the OS packages of the services that are missing, where this
    machine allows it (Debian/Ubuntu, root). Returns the exit status: 1 only when
    ``required`` and a service is still missing."""
    todo = [s for s in SERVICES.values() if find(s.name) is None]
    if not todo:
        return 0
    names = ", ".join(s.name for s in todo)
    can_apt = shutil.which("apt-get") is not None and shutil.which("apt-cache") is not None
    if not can_apt or os.geteuid() != 0:
        why = "not root" if can_apt else "no apt-get on this machine"
        for s in todo:
            print(f"services: {s.name} is missing and cannot be installed here ({why}): "
                  f"its tests will be skipped; {_how_to_install(s)}", file=sys.stderr)
        return 1 if required else 0
    _run(["apt-get", "update", "-qq"])  # once, for all the missing services
    for s in todo:
        package = next((p for p in s.packages if _package_exists(p)), None)
        if package is None:
            print(f"services: no package provides {s.name} here (tried "
                  f"{', '.join(s.packages)}): its tests will be skipped", file=sys.stderr)
            continue
        _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package])
    still = [s.name for s in todo if find(s.name) is None]
    if still:
        print(f"services: still missing after installing: {', '.join(still)}", file=sys.stderr)
        return 1 if required else 0
    print(f"services: installed {names}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install the services the tests run.")
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="install the missing services' OS packages")
    inst.add_argument("--required", action="store_true",
                      help="fail when a service is still missing (CI)")
    sub.add_parser("list", help="each service and where it is (or 'missing')")
    args = parser.parse_args(argv)
    if args.command == "install":
        return install(args.required)
    for name in SERVICES:
        print(f"{name}: {find(name) or 'missing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
