"""``python manage.py sparkfly_sandbox``: serve the Sparkfly API sandbox until Ctrl-C.

Thin on purpose: everything lives in ``sparkfly_sync.sandbox``, which also runs without Django.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from sparkfly_sync.sandbox import SparkflySandbox, serve_forever


class Command(BaseCommand):
    help = "Serve a deterministic, in-memory simulator of the Sparkfly Platform API over HTTP."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8100)
        parser.add_argument("--members", type=int, default=100)
        parser.add_argument("--offers", type=int, default=10)
        parser.add_argument("--channels", type=int, default=3)
        parser.add_argument("--merchants", type=int, default=2)
        parser.add_argument("--seed", type=int, default=0, help="same seed, same data")
        parser.add_argument("--identity", default="sandbox", help="X-Auth-Identity the sandbox accepts")
        parser.add_argument("--key", default="sandbox", help="X-Auth-Key the sandbox accepts")

    def handle(self, *args, host, port, members, offers, channels, merchants, seed, identity, key, **options):
        if min(members, offers, channels, merchants) < 0:
            raise CommandError("--members, --offers, --channels and --merchants cannot be negative")

        def announce(base_url: str) -> None:
            self.stdout.write(f"Sparkfly sandbox on {base_url}  (SPARKFLY_IDENTITY={identity} SPARKFLY_KEY={key})")
            self.stdout.write(f"{members} members, {offers} offers, {channels} channels, {merchants} merchants, seed {seed}. Ctrl-C stops it.")
            self.stdout.flush()

        try:
            sandbox = SparkflySandbox(
                identity=identity, key=key, members=members, offers=offers,
                channels=channels, merchants=merchants, seed=seed,
            )
            serve_forever(sandbox, host, port, ready=announce, access_log=options["verbosity"] >= 2)
        except KeyboardInterrupt:  # Ctrl-C while seeding; once serving, werkzeug handles it
            pass
        self.stdout.write("Sparkfly sandbox stopped.")
