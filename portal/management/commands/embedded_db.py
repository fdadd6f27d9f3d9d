"""``python manage.py embedded_db status|stop``: look after the embedded PostgreSQL."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from portal import embedded_db


class Command(BaseCommand):
    help = "Show or stop the embedded PostgreSQL under .data/ (used when DATABASE_URL is unset)."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["status", "stop"])

    def handle(self, *args, action, **options):
        data_dir = settings.EMBEDDED_DB_DIR
        if action == "stop":
            stopped = embedded_db.stop(data_dir)
            self.stdout.write(f"stopped the embedded PostgreSQL in {data_dir}" if stopped else "it was not running")
        else:
            database = settings.DATABASES["default"]
            self.stdout.write(f"database {database['NAME']} on {database.get('HOST') or 'localhost'} (data in {data_dir})")
