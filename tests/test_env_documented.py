"""Every environment variable the portal reads is documented, and nothing documented is not read:
.env.example lists exactly the variables portal/settings.py, gunicorn.conf.py and the Procfile
read, and each is in a table of the README (whose tables name no variable nobody reads)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = r"([A-Z][A-Z0-9_]*)"


def variables_read() -> set[str]:
    settings = (ROOT / "portal" / "settings.py").read_text()
    gunicorn = (ROOT / "gunicorn.conf.py").read_text()
    procfile = (ROOT / "Procfile").read_text()
    found = set(re.findall(rf'_read\("\w+", "{NAME}"', settings))
    found |= set(re.findall(rf"""_int\(["']{NAME}["']""", gunicorn))
    for source in (settings, gunicorn):
        found |= set(re.findall(rf"""os\.environ(?:\.get\(|\[)["']{NAME}["']""", source))
    found |= set(re.findall(rf"\$\{{{NAME}", procfile))
    return found


def documented_in_env_example() -> set[str]:
    return set(re.findall(rf"^{NAME}=", (ROOT / ".env.example").read_text(), re.MULTILINE))


def named_in_readme_tables() -> set[str]:
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("|")]
    # `NAME`, `NAME=value`, `$NAME`: upper case with an underscore, or one of the few without.
    return {
        name
        for row in rows
        for name in re.findall(rf"`\$?{NAME}(?:=[^`]*)?`", row)
        if "_" in name or name in {"DEBUG", "PORT"}
    }


def test_the_variables_read_are_found():
    read = variables_read()
    assert {"SECRET_KEY", "DATABASE_URL", "EMAIL_URL", "WEB_CONCURRENCY", "PORT", "WORKER_CONCURRENCY"} <= read


def test_env_example_documents_exactly_the_variables_read():
    read, documented = variables_read(), documented_in_env_example()
    assert read - documented == set(), "read but not in .env.example"
    assert documented - read == set(), "in .env.example but read by nothing"


def test_the_readme_tables_name_every_variable_read_and_no_other():
    read, named = variables_read(), named_in_readme_tables()
    assert read - named == set(), "read but in no README table"
    assert named - read == set(), "in a README table but read by nothing"
