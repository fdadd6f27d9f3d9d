"""Known vulnerabilities of the installed dependencies: pip-audit over this venv, against the first
advisory service that answers.

`make audit` runs it; CI runs it with `--if-unreachable skip`. Where no advisory service answers
(a machine behind a PyPI mirror without PyPI's JSON API, no route to OSV), pip-audit could only
fail on every package, so the script says so on one line and fails (`make audit`) or goes on (CI)
without running it. It never reports "no known vulnerabilities" for an audit that checked nothing.

There is no lock file: pyproject.toml gives lower bounds, and the set audited is the one
installed in the venv, the set the tests just ran against.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

PYPI_JSON_API = "https://pypi.org/pypi"  # pip-audit's "pypi" service always asks pypi.org itself
OSV_QUERY_URL = "https://api.osv.dev/v1/query"
# A release with published advisories. A service that answers for it with none carries no
# advisory data (a mirror that serves the JSON API with empty lists) and would pass every audit.
CANARY = ("django", "3.2")
PROBE_TIMEOUT = 5  # seconds per probe: at most two probes, so CI waits 10 s at worst


class Unreachable(Exception):
    """The service did not answer with advisory data; the message says what it answered."""


def fetch_json(request: urllib.request.Request) -> object:
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        raise Unreachable(f"HTTP {error.code}") from error
    except (urllib.error.URLError, OSError) as error:
        raise Unreachable(str(getattr(error, "reason", error))) from error
    except ValueError as error:
        raise Unreachable("an answer that is not JSON") from error


def require_advisories(advisories: object) -> None:
    if not isinstance(advisories, list) or not advisories:
        name, version = CANARY
        raise Unreachable(f"no advisories for {name} {version}, which has some")


def probe_pypi() -> None:
    name, version = CANARY
    answer = fetch_json(urllib.request.Request(f"{PYPI_JSON_API}/{name}/{version}/json"))
    require_advisories(answer.get("vulnerabilities") if isinstance(answer, dict) else None)


def probe_osv(url: str) -> None:
    name, version = CANARY
    query = json.dumps({"package": {"name": name, "ecosystem": "PyPI"}, "version": version}).encode()
    answer = fetch_json(urllib.request.Request(url, data=query, headers={"Content-Type": "application/json"}))
    require_advisories(answer.get("vulns") if isinstance(answer, dict) else None)


def audit_installed_packages(service: str, service_args: list[str]) -> int:
    """pip-audit's exit code for every package installed in this venv but the portal itself."""
    # The installed set, pinned, as a requirements file: --strict fails on any package it skips,
    # and auditing the environment directly skips the portal's own editable install (it is not
    # on PyPI), so `--strict --skip-editable` can never pass.
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    count = len(installed.splitlines())
    print(f"dependency audit: {service} answers with advisory data; auditing {count} installed packages", flush=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as requirements:
        requirements.write(installed)
        requirements.flush()
        # --strict: a package pip-audit could not check fails the audit instead of passing unchecked.
        command = [sys.executable, "-m", "pip_audit", "--strict", "--progress-spinner", "off"]
        command += ["--requirement", requirements.name, "--no-deps", "--disable-pip"]
        return subprocess.run(command + service_args).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--if-unreachable",
        choices=["fail", "skip"],
        default="fail",
        help="when no advisory service answers: fail (make audit, before a release) or skip with a warning (CI)",
    )
    parser.add_argument("--osv-url", default=OSV_QUERY_URL, help="OSV's query endpoint (or a mirror of it)")
    args = parser.parse_args()

    services = [
        ("PyPI", f"{PYPI_JSON_API}/{CANARY[0]}/{CANARY[1]}/json", probe_pypi, ["--vulnerability-service", "pypi"]),
        (
            "OSV",
            args.osv_url,
            lambda: probe_osv(args.osv_url),
            ["--vulnerability-service", "osv", "--osv-url", args.osv_url],
        ),
    ]
    tried = []
    for name, url, probe, service_args in services:
        try:
            probe()
        except Unreachable as reason:
            tried.append(f"{name} {url}: {reason}")
            continue
        return audit_installed_packages(name, service_args)

    print(
        "dependency audit NOT run: no advisory service reachable from this machine "
        f"({'; '.join(tried)}); run `make audit` where one is",
        file=sys.stderr,
    )
    return 0 if args.if_unreachable == "skip" else 1


if __name__ == "__main__":
    sys.exit(main())
