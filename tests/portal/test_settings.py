"""Settings: a wrong value is refused with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

ROOT = Path(__file__).resolve().parents[2]


def manage_check(**env_overrides):
    env = {**os.environ, **env_overrides}
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check"], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DEBUG", "maybe", "DEBUG='maybe' is not a valid bool"),
        ("SPARKFLY_PAGE_SIZE", "lots", "SPARKFLY_PAGE_SIZE='lots' is not a valid int"),
        ("SPARKFLY_READ_TIMEOUT", "soon", "SPARKFLY_READ_TIMEOUT='soon' is not a valid float"),
    ],
)
def test_an_unparsable_value_names_the_variable(variable, value, message):
    result = manage_check(**{variable: value})
    assert result.returncode != 0
    assert message in result.stderr


def test_production_settings_refuse_to_start_without_a_secret_key():
    result = manage_check(SECRET_KEY="", DEBUG="false")
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


@pytest.mark.parametrize(
    ("overrides", "check_id"),
    [
        ({"SPARKFLY_API_URL": "https://api.sparkfly.com", "SPARKFLY_IDENTITY": "", "SPARKFLY_KEY": ""}, "sparkfly_sync.E002"),
        ({"SPARKFLY_PAGE_SIZE": 20000}, "sparkfly_sync.E003"),
        ({"SPARKFLY_READ_TIMEOUT": 0}, "sparkfly_sync.E004"),
        ({"SPARKFLY_SYNC_INTERVAL_MINUTES": -5}, "sparkfly_sync.E005"),
        ({"MEMBER_PHONE_REGION": "USA"}, "sparkfly_sync.E006"),
    ],
)
def test_out_of_range_sparkfly_settings_fail_the_system_checks(settings, overrides, check_id):
    for name, value in overrides.items():
        setattr(settings, name, value)
    with pytest.raises(SystemCheckError, match=check_id):
        call_command("check")
