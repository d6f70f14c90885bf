"""The repository stands on its own: a user's clone has nothing beside it."""

from __future__ import annotations

import subprocess

from helpers import REPO

# Where code, tests and build files live; docs may mention the team's notes.
# the ways code could reach the design folder beside the repository, spelled
# so that this file does not itself read as reaching for it
_DIR = "sha" + "red"
_OUTSIDE = ("../" + _DIR, f'parent / "{_DIR}"', f'/ "{_DIR}" /')
_CHECKED = ("device", "host_tools", "tests", "bench", "boards", "Makefile", ".ci", "pyproject.toml")


def test_nothing_reads_outside_the_repository() -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", *_CHECKED],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    offenders = []
    for name in files:
        path = REPO / name
        if name == "tests/host/test_repo.py" or not path.is_file() \
                or path.suffix in (".json", ".der", ".bin"):
            continue
        text = path.read_text(errors="replace")
        if any(mark in text for mark in _OUTSIDE):
            offenders.append(name)
    assert not offenders, f"these files reach outside the repository: {offenders}"


def test_the_wycheproof_vectors_and_their_licence_are_in_the_repository() -> None:
    folder = REPO / "tests" / "vectors" / "wycheproof"
    for name in ("LICENSE", "ecdsa_secp256r1_sha256_p1363_test.json",
                 "ecdh_secp256r1_ecpoint_test.json"):
        assert (folder / name).is_file(), name
