"""Benchmark: the conversion callback endpoint under load (``make bench``).

The portal is served by gunicorn from a scratch database with one conversion endpoint:
(2 x cores) + 1 sync workers, gunicorn's documented starting point (gthread measured no
better here), and CONN_MAX_AGE=60 (persistent connections: with 0, opening a connection per
request costs both apps ~4 ms and hides what the endpoint itself costs). Both are printed. ``wrk`` loads it at 4 and 16 concurrent connections for a fixed time,
every request a distinct redemption (a per-thread counter in ``credential_id``, the values in
the query string as Sparkfly sends them). Measured in the same run, as references:

(a) a bare DRF endpoint doing one INSERT per request (``benchmarks/bare_drf.py``), served by
    the same gunicorn configuration with the portal's settings and middleware, loaded the same;
(b) ``pgbench`` single-row INSERTs into a scratch table, as many clients, as long.

The cells run interleaved (portal, bare DRF, pgbench at 4 connections, then at 16), and each
prints the CPU other processes used meanwhile: this machine is shared. Prints requests/s and
p50/p99 of each, and checks that no request failed and that every 202 left its row. Goals (issue, on this 2-core machine): the portal reaches >= 0.8x the
bare DRF figure at each concurrency, and its p99 at 16 connections is <= 50 ms. A missed goal
is printed as MISSED (the exit status stays 0); a failed check exits 1.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from support import (
    CpuMeter,
    GunicornConfig,
    close_other_sessions,
    find_program,
    percentile,
    print_grid,
    scratch_database,
    start_gunicorn,
    stop_on_signals,
    stop_processes,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("SECRET_KEY", "benchmark-only")
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")  # wrk and the sandbox call plain http
for name in ("SPARKFLY_API_URL", "SPARKFLY_IDENTITY", "SPARKFLY_KEY"):
    os.environ[name] = ""  # never a real account

GOAL_SHARE_OF_BARE = 0.8
GOAL_P99_MS = 50
GOAL_P99_CONNECTIONS = 16

BARE_TABLE = "bench_bare_insert"  # bare_drf.TABLE
PGBENCH_TABLE = "bench_pgbench_insert"
PGBENCH_NAME = "pgbench single-row INSERT"
CHANNEL_ID = 451  # the sandbox's first channel; the endpoint needs no mirror to record
# The other values of the callback, as the Sparkfly sandbox substitutes them.
OFFER_ID, STORE_ID, XID = 1701, 3001, "Qx7pL2a"

# Every request a distinct redemption; latency percentiles and status counts from done().
WRK_SCRIPT = r"""
-- Arguments after "--": the first credential id, the path up to "credential_id=", the rest.
local threads = {}
local next_thread = 0

function setup(thread)
   thread:set("thread_number", next_thread)
   next_thread = next_thread + 1
   table.insert(threads, thread)
end

function init(args)
   first_id = tonumber(args[1])
   prefix = args[2]
   suffix = args[3]
   sent, accepted, other_2xx, not_2xx = 0, 0, 0, 0
end

function request()
   sent = sent + 1
   local id = first_id + thread_number * 1000000000 + sent
   return wrk.format("GET", prefix .. string.format("%.0f", id) .. suffix)
end

function response(status, headers, body)
   if status == 202 then
      accepted = accepted + 1
   elseif status >= 200 and status < 300 then
      other_2xx = other_2xx + 1
   else
      not_2xx = not_2xx + 1
   end
end

function done(summary, latency, requests)
   local a, o, n = 0, 0, 0
   for _, thread in ipairs(threads) do
      a = a + thread:get("accepted")
      o = o + thread:get("other_2xx")
      n = n + thread:get("not_2xx")
   end
   local e = summary.errors
   io.write(string.format(
      "WRK_RESULT requests=%.0f duration_us=%.0f p50_us=%.0f p99_us=%.0f max_us=%.0f accepted=%.0f " ..
      "other_2xx=%.0f not_2xx=%.0f status_errors=%.0f connect=%.0f read=%.0f write=%.0f timeout=%.0f\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
      a, o, n, e.status, e.connect, e.read, e.write, e.timeout))
end
"""


@dataclass
class Cell:
    """One measured (system, connections) pair."""

    system: str
    connections: int
    rate: float
    p50_ms: float
    p99_ms: float
    check: str
    ok: bool
    others: float  # cores used meanwhile by processes outside the benchmark


def query_values(redeemed_at: datetime) -> str:
    """The query string after ``credential_id``: every other field of Sparkfly's template."""
    stamp = quote(redeemed_at.strftime("%Y-%m-%dT%H:%M:%SZ"), safe="")
    return f"&xid={XID}&offer_id={OFFER_ID}&offer_ids={OFFER_ID}&store_id={STORE_ID}&redeemed_at={stamp}" \
        "&status=redeemed&sf_uid=member-000001&sf_ac="


def run_wrk(wrk: str, script: Path, base_url: str, connections: int, seconds: float, first_id: int, prefix: str, suffix: str) -> dict:
    threads = min(2, connections)
    command = [
        wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "10s",
        "-s", str(script), base_url, "--", str(first_id), prefix, suffix,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    line = next((line for line in result.stdout.splitlines() if line.startswith("WRK_RESULT ")), None)
    if result.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return {key: float(value) for key, value in (pair.split("=") for pair in line.split()[1:])}


def load(
    system: str, wrk: str, script: Path, base_url: str, connections: int, args, first_id: int,
    prefix: str, suffix: str, count_rows,
) -> Cell:
    """Warm up, then measure one cell; check every 202 left a row (a request still in flight
    when wrk stops is recorded by the server without wrk counting it: at most one per connection)."""
    run_wrk(wrk, script, base_url, connections, args.warmup, first_id, prefix, suffix)
    time.sleep(1)  # the warm-up's last requests finish
    before = count_rows()
    meter = CpuMeter()
    result = run_wrk(wrk, script, base_url, connections, args.seconds, first_id + 500_000_000, prefix, suffix)
    _, others = meter.stop()
    time.sleep(1)
    rows = count_rows() - before
    accepted = int(result["accepted"])
    failures = int(result["not_2xx"] + result["status_errors"] + result["connect"] + result["read"] + result["write"] + result["timeout"])
    ok = failures == 0 and result["other_2xx"] == 0 and accepted <= rows <= accepted + connections
    check = f"{accepted:,} x 202, {rows:,} rows" + ("" if ok else f"; {failures} failed, {int(result['other_2xx'])} other 2xx  CHECK FAILED")
    return Cell(
        system, connections, result["requests"] / (result["duration_us"] / 1e6),
        result["p50_us"] / 1000, result["p99_us"] / 1000, check, ok, others,
    )


def run_pgbench(pgbench: str, settings_dict: dict, connections: int, seconds: float, workdir: Path, statement: str) -> Cell:
    from django.db import connection

    script = workdir / "insert.sql"
    script.write_text(statement + "\n")
    prefix = workdir / f"pgbench_{connections}"
    command = [pgbench, "-n", "-c", str(connections), "-j", str(min(2, connections)), "-T", f"{seconds:.0f}",
               "-f", str(script), "-l", f"--log-prefix={prefix}", "-U", settings_dict["USER"]]
    if settings_dict.get("HOST"):
        command += ["-h", settings_dict["HOST"]]
    if settings_dict.get("PORT"):
        command += ["-p", str(settings_dict["PORT"])]
    command.append(settings_dict["NAME"])
    env = {**os.environ, **({"PGPASSWORD": settings_dict["PASSWORD"]} if settings_dict.get("PASSWORD") else {})}
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {PGBENCH_TABLE}")
        (before,) = cursor.fetchone()
    meter = CpuMeter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir, timeout=seconds + 60)
    _, others = meter.stop()
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", result.stdout)
    processed = re.search(r"number of transactions actually processed: (\d+)", result.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", result.stdout)
    if result.returncode != 0 or not tps or not processed:
        raise SystemExit(f"pgbench failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    latencies_us = []
    for log in workdir.glob(f"{prefix.name}.*"):
        for line in log.read_text().splitlines():
            latencies_us.append(int(line.split()[2]))  # client, transaction, latency in µs, …
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {PGBENCH_TABLE}")
        (after,) = cursor.fetchone()
    transactions, rows = int(processed.group(1)), after - before
    failures = int(failed.group(1)) if failed else 0
    ok = failures == 0 and rows == transactions
    check = f"{transactions:,} commits, {rows:,} rows" + ("" if ok else f"; {failures} failed  CHECK FAILED")
    return Cell(
        PGBENCH_NAME, connections, float(tps.group(1)),
        percentile(latencies_us, 0.50) / 1000, percentile(latencies_us, 0.99) / 1000, check, ok, others,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of warm-up before each HTTP cell")
    parser.add_argument("--connections", default="4,16", help="comma-separated concurrencies")
    parser.add_argument("--workers", type=int, default=None, help="gunicorn workers (default 2 x cores + 1)")
    parser.add_argument("--worker-class", default="sync", choices=["sync", "gthread"])
    parser.add_argument("--threads", type=int, default=1, help="threads per gthread worker")
    parser.add_argument(
        "--conn-max-age", type=int, default=60,
        help="CONN_MAX_AGE of both apps (0 = a new database connection per request, which then dominates both)",
    )
    args = parser.parse_args()
    concurrencies = [int(n) for n in args.connections.split(",")]

    wrk = find_program("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed: `apt-get install wrk` (make bench installs it)")
    try:  # the embedded PostgreSQL's own pgbench first: the same version as the server
        import pgserver

        bundled = [Path(pgserver.__file__).parent / "pginstall" / "bin"]
    except ImportError:
        bundled = []
    pgbench = find_program("pgbench", *bundled)
    if pgbench is None:
        raise SystemExit("pgbench is not installed (the pgserver package ships one; or `apt-get install postgresql-client`)")

    default = GunicornConfig.for_this_machine(deployed=False)
    config = GunicornConfig(
        workers=args.workers or default.workers, deployed=False, worker_class=args.worker_class,
        threads=args.threads if args.worker_class == "gthread" else 1,
    )

    import django

    django.setup()
    from django.db import connection
    from django.urls import reverse

    from portal.dburl import database_url as url_of
    from sparkfly_sync.models import ConversionEndpoint, Redemption

    stop_on_signals()
    cells: list[Cell] = []
    with ExitStack() as stack:
        stack.enter_context(scratch_database())
        stack.callback(close_other_sessions)  # runs before the database is dropped
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ingest-")))
        processes: list[subprocess.Popen] = []
        stack.callback(stop_processes, processes)

        endpoint = ConversionEndpoint.objects.create(channel_id=CHANNEL_ID)
        portal_path = reverse(
            "sparkfly-conversion-callback", kwargs={"endpoint_uuid": str(endpoint.uuid), "secret": endpoint.secret}
        )
        suffix = query_values(datetime.now(UTC) - timedelta(minutes=1))
        sample_query = f"credential_id=1{suffix}"
        with connection.cursor() as cursor:
            for table in (BARE_TABLE, PGBENCH_TABLE):
                cursor.execute(
                    f"CREATE TABLE {table} (id bigserial PRIMARY KEY, received_at timestamptz NOT NULL DEFAULT now(), query text NOT NULL)"
                )
            cursor.execute("SELECT current_setting('server_version'), current_setting('synchronous_commit')")
            server_version, synchronous_commit = cursor.fetchone()
        script = workdir / "redemptions.lua"
        script.write_text(WRK_SCRIPT)
        env = {
            **os.environ,
            "DATABASE_URL": url_of(connection.settings_dict, application_name="benchmark-web"),
            "DEBUG": "false",
            "ALLOWED_HOSTS": "127.0.0.1",
            "LOG_LEVEL": "WARNING",
            "CONN_MAX_AGE": str(args.conn_max_age),
        }

        def count_redemptions() -> int:
            return Redemption.objects.count()

        def count_bare() -> int:
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT count(*) FROM {BARE_TABLE}")
                return cursor.fetchone()[0]

        systems = [
            ("portal conversion endpoint", "portal.wsgi:application", None, "/healthz", portal_path, count_redemptions),
            ("bare DRF, one INSERT", "bare_drf:application", str(ROOT / "benchmarks"), "/", "/bare/conversions", count_bare),
        ]
        servers = []
        for index, (system, app, pythonpath, ready, path, count_rows) in enumerate(systems):
            server, base_url = start_gunicorn(
                app, config, env, pythonpath=pythonpath, ready_path=ready, log_path=workdir / f"gunicorn-{index}.log"
            )
            processes.append(server)
            servers.append(base_url)
        statement = f"INSERT INTO {PGBENCH_TABLE} (query) VALUES ('{sample_query}');"
        # Interleaved (portal, bare, pgbench at each concurrency; an idle server costs nothing),
        # so a slow change in the machine's other load touches the three alike.
        for position, connections in enumerate(concurrencies):
            for index, (system, _, _, _, path, count_rows) in enumerate(systems):
                first_id = (index * 10 + position + 1) * 10**12
                cells.append(
                    load(system, wrk, script, servers[index], connections, args, first_id, path + "?credential_id=", suffix, count_rows)
                )
            cells.append(run_pgbench(pgbench, connection.settings_dict, connections, args.seconds, workdir, statement))
        stop_processes(processes)

    order = [name for name, *_ in systems] + [PGBENCH_NAME]
    cells.sort(key=lambda cell: (order.index(cell.system), cell.connections))
    rows = [
        [
            cell.system, str(cell.connections), f"{cell.rate:,.0f}", f"{cell.p50_ms:.1f}", f"{cell.p99_ms:.1f}",
            f"{cell.others:.1f}", cell.check,
        ]
        for cell in cells
    ]
    print_grid(
        f"Conversion callback ingest: {args.seconds:g} s per cell after {args.warmup:g} s of warm-up, {os.cpu_count()} cores",
        ["system", "connections", "requests/s", "p50 ms", "p99 ms", "others' CPU", "check"],
        rows,
        right={1, 2, 3, 4, 5},
    )
    print(
        f"\nweb: {config.describe()} (the same for both apps), CONN_MAX_AGE={args.conn_max_age}, DEBUG=false; "
        f"wrk {min(2, max(concurrencies))} threads, GET with the values in the query string, one new credential_id per request"
    )
    print(f"database: PostgreSQL {server_version}, synchronous_commit={synchronous_commit}, on this machine; "
          f"pgbench: one connection per client, one INSERT per transaction")
    print("others' CPU: cores used meanwhile by processes outside this benchmark (PostgreSQL aside); "
          "on a shared machine, a cell measured beside other work is low")

    by_key = {(cell.system, cell.connections): cell for cell in cells}
    portal_name, bare_name = systems[0][0], systems[1][0]
    verdicts = []
    print("\ngoals:")
    for connections in concurrencies:
        share = by_key[(portal_name, connections)].rate / by_key[(bare_name, connections)].rate
        met = share >= GOAL_SHARE_OF_BARE
        verdicts.append(met)
        print(f"  portal / bare DRF at {connections} connections: {share:.2f}x  (goal >= {GOAL_SHARE_OF_BARE}x)  {'MET' if met else 'MISSED'}")
    if GOAL_P99_CONNECTIONS in concurrencies:
        p99 = by_key[(portal_name, GOAL_P99_CONNECTIONS)].p99_ms
        met = p99 <= GOAL_P99_MS
        verdicts.append(met)
        print(f"  portal p99 at {GOAL_P99_CONNECTIONS} connections: {p99:.1f} ms  (goal <= {GOAL_P99_MS} ms)  {'MET' if met else 'MISSED'}")
    checks_ok = all(cell.ok for cell in cells)
    print("goals met" if all(verdicts) else "GOALS MISSED (see above)")
    if not checks_ok:
        print("CHECK FAILED: a request failed or a 202 left no row (see the check column)")
    sys.exit(0 if checks_ok else 1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: the child processes are stopped and the scratch database is dropped")
