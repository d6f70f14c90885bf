"""The device agent (device/mpota) checked against the ESP32 port's API.

``make lint`` runs this: mypy over device/mpota with the MicroPython stubs
(micropython-esp32-stubs, and micropython-stdlib-stubs as the standard
library) instead of CPython's typeshed, so a call the ESP32 port lacks
(``time.monotonic()``, ``machine.WDT.stop()``, a misspelt ``esp32.Partition``
method) is caught before a board meets it. Bodies of unannotated functions are
checked (MicroPython code has no annotations); what plain inference gets wrong
about untyped code (None-initialised attributes, mixed tuples) is not reported.

The stubs are not the firmware: KNOWN lists where they disagree with the real
port, each with the evidence. A finding not in KNOWN fails, and so does an
entry of KNOWN that is no longer seen (remove it).

Usage: python tests/stubcheck.py [DIR]   (default: device/mpota)
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUB_DISTRIBUTIONS = ("micropython-stdlib-stubs", "micropython-esp32-stubs")
# Inference noise on untyped code, not API use: attributes set to None in
# __init__ then used, values of a dict of mixed tuples, str/bytes reuse of a name.
QUIET_CODES = ("var-annotated", "union-attr", "index", "operator", "assignment", "str-format")

# (file, error code, message fragment, why the stubs are wrong there)
KNOWN: tuple[tuple[str, str, str, str], ...] = (
    ("http.py", "attr-defined", '"SSLContext" has no attribute "verify_mode"',
     "the port's tls.SSLContext has a settable verify_mode (MicroPython docs, ssl module); "
     "the stubs lack it"),
    ("hw.py", "arg-type", 'Argument 1 to "Partition" has incompatible type "int"',
     "esp32.Partition(id) takes Partition.BOOT / Partition.RUNNING (ints) or a label "
     "(MicroPython docs, esp32 module); the stubs allow a label only"),
    ("hw.py", "call-arg", 'Too many positional arguments for "WDT"',
     "machine.WDT's id and timeout are positional-or-keyword in the port "
     "(extmod/machine_wdt.c: MP_ARG_INT, not MP_ARG_KW_ONLY); the stubs make them "
     "keyword-only"),
    ("manifest.py", "arg-type", 'Argument 1 to "len" has incompatible type "object"',
     "inference over _FIELDS' mixed tuples: len() is only called when kind is str"),
)

_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: (?P<msg>.*?)\s+\[(?P<code>[a-z-]+)\]$")


class StubCheckError(Exception):
    """The check could not run (stubs or mypy missing)."""


def stub_tree(into: Path) -> Path:
    """A typeshed-like tree of the MicroPython stubs (stdlib/ plus the port's
    modules at the top), copied from the installed stub distributions only, so
    that nothing of CPython's site-packages is on the path."""
    for name in STUB_DISTRIBUTIONS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise StubCheckError(f"{name} is not installed: run 'make setup' "
                                 "(pip install -c constraints.txt -e '.[dev,sim]')") from None
        for file in dist.files or ():
            if file.suffix == ".pyi" or file.name == "VERSIONS":
                target = into / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(str(dist.locate_file(file))), target)
    if not (into / "stdlib" / "VERSIONS").is_file() or not (into / "machine.pyi").is_file():
        raise StubCheckError(f"the stub distributions {STUB_DISTRIBUTIONS} have an unexpected "
                             "layout (no stdlib/VERSIONS or machine.pyi)")
    return into


def findings(target: Path) -> list[tuple[str, int, str, str]]:
    """mypy's findings in ``target`` as (file name, line, code, message)."""
    with tempfile.TemporaryDirectory(prefix="mpota-stubcheck-") as tmp:
        stubs = stub_tree(Path(tmp) / "stubs")
        config = Path(tmp) / "mypy.ini"
        # the stubs' own errors are not ours to fix
        # only the agent's findings: the stubs' own errors are not ours to fix
        config.write_text("[mypy]\nignore_errors = True\n"
                          "[mypy-mpota,mpota.*]\nignore_errors = False\n")
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(config),
               "--custom-typeshed-dir", str(stubs), "--no-site-packages",
               "--cache-dir", str(Path(tmp) / "cache"), "--python-version", "3.11",
               "--check-untyped-defs", "--no-error-summary", "--show-error-codes",
               "--hide-error-context", "--no-pretty", "--no-color-output",
               *(f"--disable-error-code={c}" for c in QUIET_CODES), str(target)]
        env = dict(os.environ, MYPYPATH=str(stubs))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode not in (0, 1) or "error: INTERNAL ERROR" in proc.stdout:
        raise StubCheckError(f"mypy failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    found = []
    for line in proc.stdout.splitlines():
        match = _LINE.match(line.strip())
        if match:
            found.append((Path(match["file"]).name, int(match["line"]), match["code"],
                          match["msg"]))
        elif line.strip() and ": note:" not in line:
            raise StubCheckError(f"unexpected mypy output: {line}")
    return found


def check(target: Path, known: tuple[tuple[str, str, str, str], ...] = KNOWN) -> list[str]:
    """One line per problem: a finding not in ``known``, or a stale ``known`` entry."""
    found = findings(target)
    problems = []
    seen = set()
    for name, line, code, msg in found:
        entry = next((k for k in known if k[0] == name and k[1] == code and k[2] in msg), None)
        if entry is None:
            problems.append(f"{target / name}:{line}: {msg} [{code}]: the ESP32 port's "
                            "API (micropython-esp32-stubs) disagrees")
        else:
            seen.add(entry)
    for entry in known:
        if entry not in seen and (target / entry[0]).exists():
            problems.append(f"tests/stubcheck.py: KNOWN entry for {entry[0]} ({entry[2]}) is "
                            "no longer found: remove it")
    return problems


def main(argv: list[str]) -> int:
    target = Path(argv[1]) if len(argv) > 1 else REPO / "device" / "mpota"
    try:
        problems = check(target)
    except StubCheckError as e:
        print(f"stubcheck: error: {e}", file=sys.stderr)
        return 2
    for line in problems:
        print(line)
    if problems:
        print(f"stubcheck: {len(problems)} problem(s) in {target}", file=sys.stderr)
        return 1
    print(f"stubcheck: {target.relative_to(REPO) if target.is_relative_to(REPO) else target} "
          "matches the ESP32 port's API")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
