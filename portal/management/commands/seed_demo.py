"""Fill the database with demo data at scale: ``manage.py seed_demo --members 1000000 --redemptions 1000000``.

The work is ``portal.demo`` (set-based SQL: a million members and a million redemptions take
about a minute); the dashboard's rollups are rebuilt afterwards. It refuses a database that may hold real data unless given ``--yes``.
"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from portal.demo import DemoSize, demo_database_refusal, demo_reset, demo_seed
from portal.rollups import rollups_refresh


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


class Command(BaseCommand):
    help = "Fill the mirror, redemptions, issuances, points redemptions and deliveries with demo data."

    def add_arguments(self, parser):
        parser.add_argument("--members", type=_positive, required=True)
        parser.add_argument("--redemptions", type=_positive, required=True)
        parser.add_argument("--offers", type=_positive, default=200)
        parser.add_argument("--stores", type=_positive, default=500)
        parser.add_argument("--programs", type=_positive, default=2)
        parser.add_argument("--days", type=_positive, default=365, help="redemptions spread over this many days back")
        parser.add_argument("--reset", action="store_true", help="delete the demo rows of an earlier run first")
        parser.add_argument("--yes", action="store_true", help="seed even a database that may hold real data")

    def handle(self, *args, members, redemptions, offers, stores, programs, days, reset, yes, **options):
        if (refusal := demo_database_refusal()) and not yes:
            raise CommandError(f"Not seeding: {refusal}. Give --yes if demo rows belong there.")
        started = time.perf_counter()
        if reset:
            deleted = demo_reset()
            self.stdout.write("Deleted the earlier demo rows: " + ", ".join(f"{n:,} {what}" for what, n in deleted.items()))

        def report(what: str, rows: int, seconds: float) -> None:
            self.stdout.write(f"{what:<34} {rows:>11,} new rows  {seconds:7.1f} s")

        size = DemoSize(members=members, redemptions=redemptions, offers=offers, stores=stores, programs=programs, days=days)
        demo_seed(size=size, report=report)
        refresh_started = time.perf_counter()
        rollups_refresh(everything=True)  # the dashboard reads the daily rollups, not the records
        self.stdout.write(f"{'dashboard rollups':<34} {'rebuilt':>21}  {time.perf_counter() - refresh_started:7.1f} s")
        self.stdout.write(self.style.SUCCESS(f"Seeded in {time.perf_counter() - started:.0f} s."))
