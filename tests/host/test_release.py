"""keygen / release / verify / inspect, as a user runs them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from helpers import BOARD_8MB, tool
from mpota_host import keys, release
from mpota_host.errors import FirmwareError, KeyFileError, ReleaseError
from mpota_host.firmware import build_image


def mpota(*args: str, cwd: Path, env: dict[str, str] | None = None,
          check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([tool("mpota"), *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, **(env or {})))
    if check and proc.returncode != 0:
        raise AssertionError(f"mpota {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def signed(tmp_path: Path, firmware: Callable[..., Path]) -> Path:
    """A key pair in keys/ and a release of v2 in rel/."""
    mpota("keygen", "--out", "keys", cwd=tmp_path)
    mpota("release", str(firmware("2.0.0")), "--version", "2.0.0", "--version-code", "2",
          "--board", "esp32-generic-4mb", "--key", "keys/signing.pem", "--out", "rel",
          "--expires", "30d", cwd=tmp_path)
    return tmp_path


def failed_checks(tmp_path: Path, reldir: str = "rel", *extra: str) -> list[str]:
    proc = mpota("verify", reldir, "--pubkey", "keys/signing.pub.pem", *extra, cwd=tmp_path,
                 check=False)
    assert proc.returncode != 0, proc.stdout
    assert "failed verification" in proc.stderr
    # lines look like "  FAIL payload hash     payload SHA-256 ..."
    return [line[7:23].strip() for line in proc.stdout.splitlines() if line[2:6] == "FAIL"]


def test_keygen_writes_private_key_0600_and_prints_id(tmp_path: Path) -> None:
    out = mpota("keygen", "--out", "k", cwd=tmp_path).stdout
    mode = stat.S_IMODE((tmp_path / "k" / "signing.pem").stat().st_mode)
    assert mode == 0o600
    key_id = keys.key_id(keys.load_public(tmp_path / "k" / "signing.pub.pem"))
    assert f"key id:      {key_id}" in out
    again = mpota("keygen", "--out", "k", cwd=tmp_path, check=False)
    assert again.returncode == 1 and "never overwrites a key" in again.stderr


def test_passphrase_protected_key(tmp_path: Path, firmware: Callable[..., Path]) -> None:
    env = {keys.PASSPHRASE_ENV: "correct horse"}
    mpota("keygen", "--out", "k", "--passphrase", cwd=tmp_path, env=env)
    assert b"ENCRYPTED" in (tmp_path / "k" / "signing.pem").read_bytes()
    args = ["release", str(firmware("2.0.0")), "--version", "2.0.0", "--version-code", "2",
            "--board", "esp32-generic-4mb", "--key", "k/signing.pem", "--out", "r"]
    locked = mpota(*args, cwd=tmp_path, env={keys.PASSPHRASE_ENV: ""}, check=False)
    assert locked.returncode == 1 and "is encrypted" in locked.stderr
    wrong = mpota(*args, cwd=tmp_path, env={keys.PASSPHRASE_ENV: "wrong"}, check=False)
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr
    mpota(*args, cwd=tmp_path, env=env)
    assert (tmp_path / "r" / "manifest.sig").stat().st_size == 64


def test_release_and_verify(signed: Path) -> None:
    manifest = json.loads((signed / "rel" / "manifest.json").read_text())
    assert manifest["version_code"] == 2 and manifest["board"] == "esp32-generic-4mb"
    assert manifest["key_id"] == keys.key_id(keys.load_public(signed / "keys/signing.pub.pem"))
    out = mpota("verify", "rel", "--pubkey", "keys/signing.pub.pem", cwd=signed).stdout
    assert "rel: valid release" in out and "FAIL" not in out


def test_inspect_release_and_firmware(signed: Path, firmware: Callable[..., Path]) -> None:
    info = json.loads(mpota("inspect", "rel", "--json", cwd=signed).stdout)
    assert info["version"] == "2.0.0" and info["payload_matches"] is True
    assert info["encrypted"] is False and info["expires"].endswith("Z")
    text = mpota("inspect", str(firmware("2.0.0")), cwd=signed).stdout
    assert "checksum_valid     True" in text and "simulated_behaviour healthy" in text


def _tamper(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(raw)


def test_verify_rejects_a_changed_manifest(signed: Path) -> None:
    _tamper(signed / "rel" / "manifest.json", 40)
    assert "signature" in failed_checks(signed)


def test_verify_rejects_a_changed_signature(signed: Path) -> None:
    _tamper(signed / "rel" / "manifest.sig", 10)
    assert failed_checks(signed) == ["signature"]


def test_verify_rejects_another_key(signed: Path) -> None:
    mpota("keygen", "--out", "other", cwd=signed)
    proc = mpota("verify", "rel", "--pubkey", "other/signing.pub.pem", cwd=signed, check=False)
    assert proc.returncode == 1
    assert "FAIL signature" in proc.stdout and "FAIL key id" in proc.stdout


def test_verify_rejects_a_changed_payload(signed: Path) -> None:
    _tamper(signed / "rel" / "payload", 5000)
    assert failed_checks(signed) == ["payload hash", "image hash"]


def test_verify_rejects_a_truncated_or_padded_payload(signed: Path) -> None:
    payload = signed / "rel" / "payload"
    original = payload.read_bytes()
    payload.write_bytes(original[:-1])
    assert "payload size" in failed_checks(signed)
    payload.write_bytes(original + b"\0")
    assert "payload size" in failed_checks(signed)


def test_verify_rejects_an_expired_release(tmp_path: Path, firmware: Callable[..., Path]) -> None:
    mpota("keygen", "--out", "keys", cwd=tmp_path)
    key = keys.load_private(tmp_path / "keys" / "signing.pem")
    release.make_release(firmware("2.0.0"), tmp_path / "rel", "esp32-generic-4mb", "2", 2, key,
                         expires=release.parse_when("2020-01-01"))
    assert failed_checks(tmp_path) == ["expiry"]


def test_verify_rejects_another_board(signed: Path, tmp_path: Path) -> None:
    small = tmp_path / "small-board"
    small.mkdir()
    (small / "board.json").write_text(json.dumps({
        "name": "small", "chip": "esp32", "chip_id": 0, "flash_size": 0x200000,
        "slots": ["ota_0", "ota_1"]}))
    (small / "partitions.csv").write_text(
        "nvs, data, nvs, 0x9000, 0x4000\notadata, data, ota, 0xd000, 0x2000\n"
        "ota_0, app, ota_0, 0x10000, 0xc000\nota_1, app, ota_1, 0x20000, 0xc000\n")
    assert failed_checks(signed, "rel", "--board", str(small)) == ["board", "fits slot"]
    assert failed_checks(signed, "rel", "--board", str(BOARD_8MB)) == ["board"]


def test_verify_rejects_a_malformed_manifest(signed: Path) -> None:
    key = keys.load_private(signed / "keys" / "signing.pem")
    for raw, words in ((b"not json", "not strict JSON"),
                       (json.dumps({"format": 1}).encode(), "missing required field 'board'"),
                       (b"x" * 5000, "limit 4096")):
        (signed / "rel" / "manifest.json").write_bytes(raw)
        (signed / "rel" / "manifest.sig").write_bytes(keys.sign(key, raw))
        proc = mpota("verify", "rel", "--pubkey", "keys/signing.pub.pem", cwd=signed,
                     check=False)
        assert proc.returncode == 1 and words in proc.stdout, proc.stdout


def test_verify_reports_a_missing_file(signed: Path) -> None:
    (signed / "rel" / "payload").unlink()
    proc = mpota("verify", "rel", "--pubkey", "keys/signing.pub.pem", cwd=signed, check=False)
    assert proc.returncode == 1 and "missing payload" in proc.stderr


@pytest.mark.parametrize(("make", "words"), [
    (lambda p: p.write_bytes(build_image("2", size=8192, chip_id=9)), "built for esp32s3"),
    (lambda p: p.write_bytes(build_image("2", size=0x181000)), "an app slot holds"),
    (lambda p: p.write_bytes(b"\xe9" + b"\xff" * 0x7FFF + b"\xaa\x50" + b"\xff" * 100),
     "full image (a .bin"),
    (lambda p: p.write_text("hello"), "not an ESP32 app image"),
])
def test_release_preflight_refuses_and_leaves_nothing(
    tmp_path: Path, make: Callable[[Path], None], words: str
) -> None:
    mpota("keygen", "--out", "keys", cwd=tmp_path)
    bad = tmp_path / "bad.bin"
    make(bad)
    proc = mpota("release", "bad.bin", "--version", "2", "--version-code", "2", "--board",
                 "esp32-generic-4mb", "--key", "keys/signing.pem", "--out", "rel", cwd=tmp_path,
                 check=False)
    assert proc.returncode == 1 and words in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.bin", "keys"]


def test_release_is_atomic_and_never_overwrites(signed: Path, firmware: Callable[..., Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    key = keys.load_private(signed / "keys" / "signing.pem")
    with pytest.raises(ReleaseError, match="never overwritten"):
        release.make_release(firmware("3.0.0"), signed / "rel", "esp32-generic-4mb", "3", 3, key)

    def broken_copy(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(release.shutil, "copyfile", broken_copy)
    with pytest.raises(OSError, match="No space left"):
        release.make_release(firmware("3.0.0"), signed / "rel3", "esp32-generic-4mb", "3", 3, key)
    assert sorted(p.name for p in signed.iterdir()) == ["keys", "rel"]


def test_release_argument_errors(signed: Path, firmware: Callable[..., Path]) -> None:
    base = ["release", str(firmware("2.0.0")), "--version", "2.0.0", "--board",
            "esp32-generic-4mb", "--key", "keys/signing.pem", "--out", "r2"]
    proc = mpota(*base, "--version-code", "-1", cwd=signed, check=False)
    assert proc.returncode == 2 and "--version-code" in proc.stderr
    proc = mpota(*base, "--version-code", "3", "--expires", "someday", cwd=signed, check=False)
    assert proc.returncode == 1 and "is not YYYY-MM-DD" in proc.stderr
    proc = mpota(*base, "--version-code", "3", "--notes", "n" * 2000, cwd=signed, check=False)
    assert proc.returncode == 1 and "'notes' must be 1-1024 characters" in proc.stderr
    proc = mpota(*[a if a != "keys/signing.pem" else "keys/signing.pub.pem" for a in base],
                 "--version-code", "3", cwd=signed, check=False)
    assert proc.returncode == 1 and "is a public key; give the private key" in proc.stderr


def test_library_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        keys.load_public(tmp_path / "nope.pem")
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(FirmwareError, match="cannot read firmware"):
        release.make_release(tmp_path, tmp_path / "r", "esp32-generic-4mb", "1", 1, key)


def test_mip_package_lists_every_agent_module() -> None:
    from helpers import REPO

    package = json.loads((REPO / "device" / "mpota" / "package.json").read_text())
    listed = {source for _, source in package["urls"]}
    assert listed == {p.name for p in (REPO / "device" / "mpota").glob("*.py")}
    assert all(dest == f"mpota/{src}" for dest, src in package["urls"])


def test_host_and_device_agree_on_the_manifest_fields() -> None:
    # Two runtimes, two copies of the table: this keeps them in step.
    import ast

    from helpers import REPO

    source = (REPO / "device" / "mpota" / "manifest.py").read_text()
    tree = ast.parse(source)
    (table,) = [node.value for node in tree.body if isinstance(node, ast.Assign)
                and [getattr(t, "id", None) for t in node.targets] == ["_FIELDS"]]
    names = {"int": int, "str": str, "dict": dict}

    class Types(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.AST:
            return ast.Constant(node.id)

    literal = ast.literal_eval(ast.fix_missing_locations(Types().visit(table)))
    device_fields = {k: (names[v[0]], *v[1:]) for k, v in literal.items()}
    assert device_fields == release.FIELDS
    syntax = (REPO / "device" / "mpota" / "syntax.py").read_text()
    assert f"MAX_DEPTH = {release.MAX_DEPTH}\n" in syntax
    verify = (REPO / "device" / "mpota" / "verify.py").read_text()
    assert f"MAX_MANIFEST = {release.MAX_MANIFEST}\n" in verify


def test_verify_of_an_unreadable_release_is_an_error_not_a_traceback(signed: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    (signed / "rel" / "payload").chmod(0)
    proc = mpota("verify", "rel", "--pubkey", "keys/signing.pub.pem", cwd=signed, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot read release" in proc.stderr and "permissions" in proc.stderr


def test_inspect_and_verify_escape_what_the_manifest_says(signed: Path) -> None:
    key = keys.load_private(signed / "keys" / "signing.pem")
    fields = json.loads((signed / "rel" / "manifest.json").read_bytes())
    fields["notes"] = "\x1b[2J\x1b]0;owned\x07"
    fields["board"] = "\x1b[31mevil"
    raw = release.encode_manifest(fields)  # json.dumps escapes them: valid JSON
    (signed / "rel" / "manifest.json").write_bytes(raw)
    (signed / "rel" / "manifest.sig").write_bytes(keys.sign(key, raw))
    shown = mpota("inspect", "rel", cwd=signed).stdout
    assert "\x1b" not in shown and "\\x1b[2J\\x1b]0;owned\\x07" in shown
    proc = mpota("verify", "rel", "--pubkey", "keys/signing.pub.pem", cwd=signed, check=False)
    assert "\x1b" not in proc.stdout + proc.stderr and "\\x1b[31mevil" in proc.stdout


# likely mistakes: refused in one line, released with --force and a warning


@pytest.fixture
def two_keys(tmp_path: Path) -> Path:
    mpota("keygen", "--out", "keys", cwd=tmp_path)
    mpota("keygen", "--kind", "encryption", "--out", "keys", cwd=tmp_path)
    return tmp_path


@pytest.mark.parametrize("change, words", [
    ({"--version": "7.7.7"},
     "--version 7.7.7 disagrees with the image, whose app descriptor says 2.0.0: give --version "
     "2.0.0"),
    ({"--expires": "2020-01-01"}, "--expires 2020-01-01T00:00:00Z is already past"),
    ({"--key": "keys/encryption.pem"}, "--key keys/encryption.pem is an encryption key"),
    ({"--encrypt-for": "keys/signing.pub.pem"},
     "--encrypt-for keys/signing.pub.pem is the signing key itself"),
], ids=["version", "expired", "encryption-key-signs", "signing-key-encrypts"])
def test_release_refuses_likely_mistakes_unless_forced(
    two_keys: Path, firmware: Callable[..., Path], change: dict[str, str], words: str
) -> None:
    options = {"--version": "2.0.0", "--version-code": "2", "--board": "esp32-generic-4mb",
               "--key": "keys/signing.pem", "--out": "rel"} | change
    args = ["release", str(firmware("2.0.0"))] + [x for kv in options.items() for x in kv]
    refused = mpota(*args, cwd=two_keys, check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert words in refused.stderr and "(or --force if this is intended)" in refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert not (two_keys / "rel").exists()

    forced = mpota(*args, "--force", cwd=two_keys)
    assert forced.stderr.count("\n") == 1
    assert forced.stderr.startswith("mpota: warning: ") and words in forced.stderr
    assert "(released anyway: --force)" in forced.stderr
    assert (two_keys / "rel" / "manifest.sig").exists()


def test_a_renamed_encryption_key_is_still_known_by_its_public_key(
    two_keys: Path, firmware: Callable[..., Path]
) -> None:
    # keygen wrote encryption.pub.pem beside it: the same key, whatever the file name
    (two_keys / "keys" / "encryption.pem").rename(two_keys / "keys" / "fleet.pem")
    proc = mpota("release", str(firmware("2.0.0")), "--version", "v2.0.0", "--version-code",
                 "2", "--board", "esp32-generic-4mb", "--key", "keys/fleet.pem", "--out", "rel",
                 cwd=two_keys, check=False)
    assert proc.returncode == 1 and "--key keys/fleet.pem is an encryption key" in proc.stderr
    assert "--version" not in proc.stderr  # v2.0.0 is the descriptor's 2.0.0


def test_likely_mistakes_in_the_library(firmware: Callable[..., Path]) -> None:
    from mpota_host.appimage import inspect_image

    image = inspect_image(firmware("2.0.0"))
    key = ec.generate_private_key(ec.SECP256R1())
    signing = (Path("k/signing.pem"), key)
    assert release.likely_mistakes(image, "2.0.0", None, signing, []) == []
    assert release.likely_mistakes(image, "v2.0.0", release.parse_when("1d"), signing, []) == []
    found = release.likely_mistakes(image, "2.0.1", release.parse_when("2001-01-01"), signing,
                                    [(Path("k/x.pub.pem"), key.public_key())])
    assert [p.split(" ")[0] for p in found] == ["--version", "--expires", "--encrypt-for"]


def test_keygen_passphrase_without_a_terminal_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run([tool("mpota"), "keygen", "--out", "k", "--passphrase"],
                          capture_output=True, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL,
                          env={k: v for k, v in os.environ.items() if k != keys.PASSPHRASE_ENV})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Warning" not in proc.stderr
    assert "needs a terminal to ask for the passphrase, or $MPOTA_KEY_PASSPHRASE" in proc.stderr
    assert not (tmp_path / "k" / "signing.pem").exists()


def in_a_terminal(args: list[str], cwd: Path, answers: list[str]) -> tuple[int, str]:
    """Run mpota with a pty as its controlling terminal; type each answer after a prompt."""
    import pty
    import select

    env = {k: v for k, v in os.environ.items() if k != keys.PASSPHRASE_ENV}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its terminal
        os.chdir(cwd)
        os.execve(tool("mpota"), [tool("mpota"), *args], env)
    seen = b""
    pending = list(answers)
    while True:
        ready, _, _ = select.select([fd], [], [], 60)
        assert ready, f"mpota is silent; so far: {seen!r}"
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break  # the child closed the terminal
        if not chunk:
            break
        seen += chunk
        # click writes "Prompt:", then getpass turns echo off and writes " "
        if pending and seen.endswith(b": "):
            os.write(fd, pending.pop(0).encode() + b"\n")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


def test_passphrases_are_asked_in_a_terminal(tmp_path: Path,
                                             firmware: Callable[..., Path]) -> None:
    code, shown = in_a_terminal(["keygen", "--out", "k", "--passphrase"], tmp_path,
                                ["open sesame", "open sesame"])
    assert code == 0, shown
    assert "open sesame" not in shown  # not echoed
    assert b"ENCRYPTED" in (tmp_path / "k" / "signing.pem").read_bytes()
    args = ["release", str(firmware("2.0.0")), "--version", "2.0.0", "--version-code", "2",
            "--board", "esp32-generic-4mb", "--key", "k/signing.pem", "--out", "r"]
    code, shown = in_a_terminal(args, tmp_path, ["wrong"])
    assert code == 1 and "wrong passphrase" in shown and not (tmp_path / "r").exists()
    code, shown = in_a_terminal(args, tmp_path, ["open sesame"])
    assert code == 0, shown
    assert "Passphrase for k/signing.pem" in shown and "open sesame" not in shown
    assert (tmp_path / "r" / "manifest.sig").exists()
