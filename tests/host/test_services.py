"""The services policy of the tests (tests/services.py): a missing service skips
its tests on a contributor's machine, is listed at the end of the run, and fails
them under CI."""

from __future__ import annotations

import pytest

import services


@pytest.fixture
def absent(monkeypatch: pytest.MonkeyPatch) -> str:
    name = "no-such-daemon"
    monkeypatch.setitem(services.SERVICES, name,
                        services.Service(name, "mpota-no-such-daemon", ("no-such-package",)))
    monkeypatch.setattr(services, "missing", {})
    return name


def test_missing_service_skips_and_is_listed(absent: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-daemon not found on this machine"):
        services.require_service(absent)
    assert services.summary() == [f"{absent}: {services.missing[absent]}"]
    assert "apt-get install no-such-package" in services.summary()[0]


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_missing_service_fails_under_ci(absent: str, monkeypatch: pytest.MonkeyPatch,
                                        value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match=r"CI=true and a service .* is missing"):
        services.require_service(absent)
    assert services.summary() == []


def test_present_service_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(services.SERVICES, "sh", services.Service("sh", "sh", ("dash",)))
    assert services.require_service("sh").name == "sh"


@pytest.mark.parametrize(("required", "status"), [(False, 0), (True, 1)])
def test_install_without_root_says_what_to_install(absent: str, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str],
                                                   required: bool, status: int) -> None:
    monkeypatch.setattr(services.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(services, "_run", lambda cmd: pytest.fail(f"ran {cmd}"))
    assert services.install(required) == status
    err = capsys.readouterr().err
    assert f"{absent} is missing and cannot be installed here" in err
    assert "no-such-package" in err
