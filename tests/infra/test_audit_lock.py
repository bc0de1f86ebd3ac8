"""Tests for infra/audit_lock.py (`make audit`): an audit that could not reach the advisory database never passes.

The offline path runs the real pip-audit on a two-pin lock copied from requirements.lock, with HTTPS sent to a
closed port on 127.0.0.1 (a proxy that refuses), so the advisory database is unreachable whether or not this
machine has network. The judgement of a report with vulnerabilities is checked with a stand-in pip-audit command
given through ``audit``'s ``pip_audit`` parameter.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.integration  # every test starts pip-audit (or a stand-in) as a subprocess

ROOT = Path(__file__).resolve().parents[2]


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_lock", ROOT / "infra" / "audit_lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


audit_lock = _module()


def _pins(*names: str) -> str:
    """The hashed entries of ``names`` from the project's requirements.lock (pin line and its hash lines)."""
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    out: list[str] = []
    for index, line in enumerate(lines):
        if line.split("==")[0] in names and "==" in line:
            out.append(line)
            out.extend(following for following in lines[index + 1:index + 4] if following.strip().startswith("--hash"))
    return "\n".join(out) + "\n"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every HTTPS request of pip-audit goes to a proxy on a closed local port: the database is unreachable."""
    proxy = f"http://127.0.0.1:{_closed_port()}"
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("service", ["pypi", "osv"])
def test_when_the_advisory_database_is_unreachable_then_the_audit_fails_saying_nothing_was_checked(
        tmp_path: Path, service: str) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(_pins("six", "zipp"))

    status, lines = audit_lock.audit(lock, service)

    assert status == audit_lock.UNCHECKED == 2
    assert len(lines) == 1
    assert lines[0].startswith("could not reach the advisory database (")
    assert "no vulnerabilities were checked" in lines[0]
    assert "2 pinned dependencies unchecked" in lines[0]
    assert "No known vulnerabilities" not in lines[0]


@pytest.mark.usefixtures("offline")
def test_when_make_audit_runs_offline_then_it_prints_one_line_and_exits_2(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(_pins("six"))

    assert audit_lock.main([str(lock)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("audit: could not reach the advisory database (PyPI): no vulnerabilities were checked")


def _stand_in(tmp_path: Path, report: dict[str, object]) -> list[str]:
    """A pip-audit stand-in printing ``report`` as its JSON output (pip-audit's -f json shape)."""
    script = tmp_path / "pip_audit_stand_in.py"
    vulnerable = any(dep.get("vulns") for dep in report["dependencies"])  # type: ignore[attr-defined]
    script.write_text(f"import json, sys\nprint(json.dumps({report!r}))\nsys.exit({int(vulnerable)})\n")
    return [sys.executable, str(script)]


def test_when_a_pin_has_an_advisory_then_the_audit_names_it_and_exits_1(tmp_path: Path) -> None:
    report = {"dependencies": [
        {"name": "six", "version": "1.17.0", "vulns": []},
        {"name": "jinja2", "version": "3.1.3", "vulns": [{"id": "GHSA-h75v-3vvj-5mfj", "fix_versions": ["3.1.4"],
                                                         "aliases": ["CVE-2024-34064"], "description": "xss"}]},
    ], "fixes": []}
    lock = tmp_path / "requirements.lock"
    lock.write_text(_pins("six"))

    status, lines = audit_lock.audit(lock, pip_audit=_stand_in(tmp_path, report))

    assert status == audit_lock.VULNERABLE == 1
    assert lines == ["jinja2 3.1.3: GHSA-h75v-3vvj-5mfj (fixed in 3.1.4)"]


def test_when_some_pins_could_not_be_looked_up_then_the_audit_is_incomplete_not_clean(tmp_path: Path) -> None:
    report = {"dependencies": [
        {"name": "six", "version": "1.17.0", "vulns": []},
        {"name": "zipp", "skip_reason": "Dependency not found on PyPI and could not be audited: zipp (4.1.2)"},
    ], "fixes": []}
    lock = tmp_path / "requirements.lock"
    lock.write_text(_pins("six", "zipp"))

    status, lines = audit_lock.audit(lock, pip_audit=_stand_in(tmp_path, report))

    assert status == audit_lock.UNCHECKED
    assert lines == ["1 of 2 pinned dependencies could not be checked against the advisory database (PyPI): zipp; "
                     "the audit is incomplete"]


def test_when_every_pin_was_checked_and_none_is_vulnerable_then_the_audit_passes(tmp_path: Path) -> None:
    report = {"dependencies": [{"name": "six", "version": "1.17.0", "vulns": []},
                               {"name": "zipp", "version": "4.1.2", "vulns": []}], "fixes": []}
    lock = tmp_path / "requirements.lock"
    lock.write_text(_pins("six", "zipp"))

    status, lines = audit_lock.audit(lock, pip_audit=_stand_in(tmp_path, report))

    assert status == audit_lock.OK == 0
    assert lines == [f"no known vulnerabilities in the 2 pinned dependencies of {lock} (PyPI)"]
