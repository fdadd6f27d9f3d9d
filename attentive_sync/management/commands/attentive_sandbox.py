"""``python manage.py attentive_sandbox``: serve the Attentive API sandbox until Ctrl-C.

Thin on purpose: everything lives in ``attentive_sync.sandbox``, which also runs without Django.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from attentive_sync.sandbox import DEFAULT_RATE_LIMIT, AttentiveSandbox, serve_forever


class Command(BaseCommand):
    help = (
        "Serve an in-memory simulator of Attentive's v1 REST API over HTTP. "
        "-v 2 logs every request (off by default: it slows a benchmark down)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8200)
        parser.add_argument("--api-key", default="sandbox", help="the Bearer key the sandbox accepts")
        parser.add_argument(
            "--rate-limit", type=int, default=DEFAULT_RATE_LIMIT,
            help="requests per second of most endpoints (identity 10, subscribe 10, unsubscribe 5); 0 = unlimited",
        )
        parser.add_argument("--fail-rate", type=float, default=0.0, help="share (0-1) of valid requests that fail")
        parser.add_argument(
            "--fail-with", default="500",
            help="how they fail, one picked at random each time: a comma-separated mix of 500, 429, timeout (500)",
        )
        parser.add_argument(
            "--timeout-seconds", type=float, default=15.0,
            help="how long a 'timeout' failure holds the connection before dropping it (15)",
        )
        parser.add_argument("--latency-ms", type=float, default=0, help="delay of every answer")
        parser.add_argument("--seed", type=int, default=0, help="same seed, same requests failed by --fail-rate")

    def handle(self, *args, host, port, api_key, rate_limit, fail_rate, fail_with, timeout_seconds, latency_ms, seed, **options):
        try:
            sandbox = AttentiveSandbox(
                api_key=api_key, rate_limit=rate_limit, fail_rate=fail_rate, latency_ms=latency_ms, seed=seed,
                fail_with=tuple(kind.strip() for kind in fail_with.split(",") if kind.strip()),
                timeout_seconds=timeout_seconds,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

        def announce(base_url: str) -> None:
            limits = f"rate limit {rate_limit}/s (identity and subscribe 10/s, unsubscribe 5/s)" if rate_limit else "no rate limit"
            self.stdout.write(f"Attentive sandbox on {base_url}  (API key: {api_key})")
            mix = f" ({fail_with})" if fail_rate else ""
            self.stdout.write(f"{limits}, fail rate {fail_rate:g}{mix}, latency {latency_ms:g} ms, seed {seed}. Ctrl-C stops it.")
            self.stdout.flush()

        # werkzeug handles Ctrl-C and closes the port.
        serve_forever(sandbox, host, port, ready=announce, access_log=options["verbosity"] >= 2)
        self.stdout.write("Attentive sandbox stopped.")
