"""README.md's shell blocks run as written.

Every ```sh block of the README runs, in order, with `.venv/bin` first on
PATH (so `mpota` is this checkout's), unless an HTML comment right before it
says why it cannot run here:

    <!-- readme-test: skip (needs a board on a serial port) -->

Each skipped block shows up as a pytest skip naming the README line and that
reason. Other markers:

    <!-- readme-test: fails -->            every command must exit non-zero
                                           (a documented error message)
    <!-- readme-test: dir "Section" -->    this section runs in the directory
                                           of that earlier "## Section"
    <!-- readme-test: file NAME -->        (before a ```json block) the block is
                                           a file the section's commands made
                                           the rest of: it must parse, and the
                                           files it names (ca, trusted_keys)
                                           must exist beside it

Each "## " section otherwise runs in a fresh directory holding stand-ins for
the files a user downloads from micropython.org (simulated app images of
the same format, under the same names: ``DOWNLOADS``).

A command is one line (or lines joined by a trailing backslash). A comment
line ``#   text`` (three spaces) under a command is output the command must
print (stdout or stderr): ``...`` and ``<anything>`` match any text, and a run
of 12+ hex digits or a UTC timestamp matches any other. ``# text`` (one space)
is a plain comment. ``mpota serve`` runs in the background until the end of
its block: the block goes on once the server printed its expected lines.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mpota_host.firmware import write_image

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
VENV_BIN = REPO / ".venv" / "bin"
SERVER_PORT = 8443  # mpota serve's default, which the README uses

# what a user downloads, by name: (version, image size)
DOWNLOADS = {
    "ESP32_GENERIC-OTA-20241129-v1.24.1.app-bin": ("1.24.1", 256 * 1024),
    "ESP32_GENERIC-OTA-20250415-v1.25.0.app-bin": ("1.25.0", 256 * 1024),
}

_MARK = re.compile(r"<!--\s*readme-test:\s*(.*?)\s*-->")


@dataclass
class Command:
    line: int
    text: str
    expected: list[str] = field(default_factory=list)


@dataclass
class JsonFile:
    section: str
    line: int
    name: str
    text: str


@dataclass
class Block:
    section: str
    line: int
    commands: list[Command]
    marks: list[str]

    @property
    def skip_reason(self) -> str | None:
        for mark in self.marks:
            match = re.fullmatch(r"skip\s*\((.+)\)", mark)
            if match:
                return match.group(1).strip()
        return None

    @property
    def fails(self) -> bool:
        return "fails" in self.marks


def _commands(first_line: int, lines: list[str]) -> list[Command]:
    commands: list[Command] = []
    pending = ""
    start = 0
    for n, raw in enumerate(lines, first_line):
        line = raw.rstrip()
        if pending:
            pending += "\n" + line
        elif line.startswith("#   ") and commands:
            commands[-1].expected.append(line[4:].strip())
            continue
        elif not line.strip() or line.lstrip().startswith("#"):
            continue
        else:
            pending, start = line, n
        if pending.endswith("\\"):
            continue
        commands.append(Command(start, pending))
        pending = ""
    assert not pending, f"README.md:{start}: a command ends in a backslash"
    return commands


def parse(text: str) -> tuple[list[Block], dict[str, str], list[JsonFile]]:
    """The sh blocks of ``text``, each section's directory (section -> section) and
    the JSON files it shows."""
    blocks: list[Block] = []
    files: list[JsonFile] = []
    dirs: dict[str, str] = {}
    section = "(top)"
    marks: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
            dirs.setdefault(section, section)
        for mark in _MARK.findall(line):
            match = re.fullmatch(r'dir\s+"(.+)"', mark)
            if match:
                dirs[section] = dirs[match.group(1)]
            else:
                marks.append(mark)
        fence = line.strip()
        if fence.startswith("```"):
            body: list[str] = []
            i += 1
            while not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            if fence == "```sh":
                blocks.append(Block(section, i - len(body), _commands(i - len(body) + 1, body),
                                    marks))
            named = [m[5:].strip() for m in marks if m.startswith("file ")]
            if fence == "```json" and named:
                files.append(JsonFile(section, i - len(body), named[0], "\n".join(body)))
            marks = []
        i += 1
    return blocks, dirs, files


BLOCKS, DIRS, FILES = parse(README.read_text(encoding="utf-8"))


def _pattern(expected: str) -> re.Pattern[str]:
    parts = re.split(r"(\.\.\.|<[^<>]+>|\b[0-9a-f]{12,}\b|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ|\s+)",
                     expected)
    regex = ""
    for part in parts:
        if not part:
            continue
        if part == "..." or (part.startswith("<") and part.endswith(">")):
            regex += ".*?"
        elif re.fullmatch(r"[0-9a-f]{12,}", part):
            regex += f"[0-9a-f]{{{len(part)}}}"
        elif re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", part):
            regex += r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
        elif part.isspace():
            regex += r"\s+"
        else:
            regex += re.escape(part)
    return re.compile(regex)


def _check_output(where: str, command: Command, output: str) -> None:
    for expected in command.expected:
        assert _pattern(expected).search(output), (
            f"{where}: `{command.text}` did not print\n    {expected}\nIt printed:\n{output}")


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    assert (VENV_BIN / "mpota").exists(), f"no {VENV_BIN}/mpota: run `make test` (it makes .venv)"
    e = dict(os.environ)
    e["PATH"] = f"{VENV_BIN}{os.pathsep}{e.get('PATH', '')}"
    e.pop("MPOTA_BOARDS", None)
    e.setdefault("MPOTA_CACHE", str(REPO / ".work" / "mpota-cache"))
    return e


@pytest.fixture(scope="module")
def section_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    made: dict[str, Path] = {}
    yield made


def _section_dir(name: str, made: dict[str, Path], tmp: pytest.TempPathFactory) -> Path:
    key = DIRS.get(name, name)
    if key not in made:
        path = tmp.mktemp("readme")
        for filename, (version, size) in DOWNLOADS.items():
            write_image(path / filename, version, "healthy", size)
        made[key] = path
    return made[key]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _start_server(where: str, command: Command, cwd: Path,
                  env: dict[str, str]) -> tuple[subprocess.Popen[str], Path]:
    assert _port_free(SERVER_PORT), (
        f"{where}: port {SERVER_PORT} is in use; the README's `mpota serve` needs it: stop "
        "whatever listens there and run the test again")
    log = cwd / f"serve-{command.line}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["bash", "-c", "exec " + command.text], cwd=cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    wanted = [_pattern(e) for e in command.expected] or [re.compile("serving")]
    deadline = time.monotonic() + 30
    while True:
        text = log.read_text()
        if all(p.search(text) for p in wanted):
            return proc, log
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            _check_output(where, command, log.read_text())
            raise AssertionError(f"{where}: `{command.text}` stopped (exit {proc.returncode}) "
                                 f"before serving:\n{log.read_text()}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> None:
    servers: list[subprocess.Popen[str]] = []
    try:
        for command in block.commands:
            where = f"README.md:{command.line}"
            if command.text.startswith("mpota serve"):
                proc, _ = _start_server(where, command, cwd, env)
                servers.append(proc)
                continue
            done = subprocess.run(["bash", "-c", command.text], cwd=cwd, env=env,
                                  capture_output=True, text=True, timeout=60)
            output = done.stdout + done.stderr
            if block.fails:
                assert done.returncode != 0, (
                    f"{where}: `{command.text}` is documented to fail, but exited 0:\n{output}")
            else:
                assert done.returncode == 0, (
                    f"{where}: `{command.text}` exited {done.returncode}:\n{output}")
            _check_output(where, command, output)
    finally:
        for proc in servers:
            _stop(proc)


def test_every_skip_names_its_reason() -> None:
    assert BLOCKS, "README.md has no ```sh blocks"
    for block in BLOCKS:
        for mark in block.marks:
            assert mark == "fails" or mark.startswith("file ") or block.skip_reason, (
                f"README.md:{block.line}: unknown marker <!-- readme-test: {mark} -->; "
                "use skip (REASON), fails or dir \"Section\"")
    runnable = [b for b in BLOCKS if b.skip_reason is None]
    assert len(runnable) >= 5, "most of the README's commands must run in this test"


def test_the_output_patterns_match_what_they_show() -> None:
    # the checker itself: a pattern must fail on other output
    pattern = _pattern("key id:      e12ce2a38d3b45cb")
    assert pattern.search("key id:      0123456789abcdef")
    assert not pattern.search("key id:      0123")
    assert _pattern("token: <the token>").search("token: abc-DEF_1")
    assert not _pattern("serving 1 releases").search("serving 2 releases")


SECTIONS = list(dict.fromkeys(b.section for b in BLOCKS if b.skip_reason is None))


@pytest.mark.parametrize("section", SECTIONS)
def test_section_runs_as_written(section: str, env: dict[str, str],
                                 section_dirs: dict[str, Path],
                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    cwd = _section_dir(section, section_dirs, tmp_path_factory)
    for block in BLOCKS:
        if block.section == section and block.skip_reason is None:
            run_block(block, cwd, env)
    for shown in FILES:
        if shown.section == section:
            check_json_file(shown, cwd)


def check_json_file(shown: JsonFile, cwd: Path) -> None:
    where = f"README.md:{shown.line} ({shown.name})"
    try:
        data = json.loads(shown.text)
    except ValueError as e:
        raise AssertionError(f"{where} is not JSON: {e}") from None
    (cwd / shown.name).write_text(shown.text)
    named = [data.get("ca"), *data.get("trusted_keys", []), data.get("encryption_key")]
    for name in filter(None, named):
        assert (cwd / name).is_file(), (
            f"{where} names {name}, which the commands above did not make")


SKIPPED = [b for b in BLOCKS if b.skip_reason is not None]


@pytest.mark.parametrize("block", SKIPPED, ids=[f"line{b.line}" for b in SKIPPED])
def test_skipped_block(block: Block) -> None:
    pytest.skip(f"README.md:{block.line} ({block.commands[0].text.splitlines()[0]!r}...): "
                f"{block.skip_reason}")
