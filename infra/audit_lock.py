"""`make audit`: check every pin of requirements.lock against the advisory database, and say so only when it was.

pip-audit (PyPI's JSON API, or OSV with ``--service osv``) reports a package whose advisories it could not fetch as
*skipped* ("Dependency not found on PyPI and could not be audited") and still prints "No known vulnerabilities
found" with exit status 0. Offline, every pin is skipped that way, so a bare ``pip-audit`` in a CI without network
reads as a clean audit. This wrapper reads pip-audit's JSON report and exits:

- 0: every pinned dependency was looked up and none has a known vulnerability;
- 1: at least one has a known vulnerability (one line each: name, version, advisory, fixed versions);
- 2: the advisory database could not be reached, or some pins could not be checked: nothing (or not everything)
  was audited, so the result is a failure, never a pass.

Usage: ``python infra/audit_lock.py [requirements.lock] [--service pypi|osv]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

OK, VULNERABLE, UNCHECKED = 0, 1, 2
UNREACHABLE = ("could not reach the advisory database ({service}): no vulnerabilities were checked "
               "({n} pinned dependencies unchecked; run `make audit` where {host} is reachable)")
HOSTS = {"pypi": "pypi.org", "osv": "api.osv.dev"}
# Signs, in pip-audit's stderr, that it died on the network rather than on the lock file.
NETWORK_ERRORS = ("ConnectionError", "ConnectTimeout", "ReadTimeout", "NameResolutionError", "ProxyError",
                  "Max retries exceeded", "Failed to establish a new connection")


def audit(lock: Path, service: str = "pypi", pip_audit: list[str] | None = None) -> tuple[int, list[str]]:
    """Run pip-audit on ``lock`` and judge its report: (exit status, the lines to print).

    ``pip_audit`` is the command that runs pip-audit (default: this interpreter's ``-m pip_audit``).
    """
    command = [*(pip_audit or [sys.executable, "-m", "pip_audit"]), "--requirement", str(lock), "--require-hashes",
               "--disable-pip", "--vulnerability-service", service, "--format", "json", "--progress-spinner", "off"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    label = "PyPI" if service == "pypi" else "OSV"
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        if any(sign in done.stderr for sign in NETWORK_ERRORS):
            pins = sum(1 for line in lock.read_text().splitlines() if "==" in line and not line.startswith("#"))
            return UNCHECKED, [UNREACHABLE.format(service=label, n=pins, host=HOSTS[service])]
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return UNCHECKED, [f"pip-audit failed (exit {done.returncode}): {last}; no vulnerabilities were checked"]
    dependencies = report.get("dependencies", [])
    skipped = [dep for dep in dependencies if dep.get("skip_reason")]
    vulnerable = [dep for dep in dependencies if dep.get("vulns")]
    lines = [f"{dep['name']} {dep['version']}: {vuln['id']} (fixed in {_fixes(vuln)})"
             for dep in vulnerable for vuln in dep["vulns"]]
    if dependencies and len(skipped) == len(dependencies):
        return UNCHECKED, [UNREACHABLE.format(service=label, n=len(skipped), host=HOSTS[service])]
    if skipped:
        names = ", ".join(dep["name"] for dep in skipped[:5]) + (" …" if len(skipped) > 5 else "")
        lines.append(f"{len(skipped)} of {len(dependencies)} pinned dependencies could not be checked against the "
                     f"advisory database ({label}): {names}; the audit is incomplete")
    if vulnerable:
        return VULNERABLE, lines
    if skipped:
        return UNCHECKED, lines
    return OK, [f"no known vulnerabilities in the {len(dependencies)} pinned dependencies of {lock} ({label})"]


def _fixes(vuln: dict[str, object]) -> str:
    versions = vuln.get("fix_versions") or []
    return ", ".join(str(version) for version in versions) if isinstance(versions, list) and versions else \
        "no release yet"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lock", nargs="?", default="requirements.lock", type=Path)
    parser.add_argument("--service", choices=sorted(HOSTS), default="pypi")
    args = parser.parse_args(argv)
    if not args.lock.is_file():
        print(f"audit: {args.lock} does not exist", file=sys.stderr)
        return UNCHECKED
    status, lines = audit(args.lock, args.service)
    for line in lines:
        print(f"audit: {line}", file=sys.stderr if status else sys.stdout)
    return status


if __name__ == "__main__":
    sys.exit(main())
