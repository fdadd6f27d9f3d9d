"""A kept database connection whose server went silent is given up within
DATABASE_DEAD_CONNECTION_SECONDS (TCP keepalives and tcp_user_timeout), instead of holding a
request or a job for the kernel's ~15 minutes of retransmissions.

The options are checked on live connections (Django's, procrastinate's worker pool); then, as
root, a real cut: a client in a network namespace of its own reaches the test database through
a veth pair whose packets are then dropped (a ``blackhole`` qdisc: nothing answers, nothing is
refused, as when a network is cut or a failover leaves a half-open socket)."""

from __future__ import annotations

import ast
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OPTIONS = {
    "keepalives": "1", "keepalives_idle": "4", "keepalives_interval": "2", "keepalives_count": "3",
    "tcp_user_timeout": "10000",
}


def dead_connection_options(parameters: dict) -> dict:
    return {name: parameters.get(name) for name in DEFAULT_OPTIONS}


@pytest.mark.django_db
def test_djangos_connection_carries_the_keepalives_and_the_user_timeout():
    connection.ensure_connection()

    assert settings.DATABASE_DEAD_CONNECTION_SECONDS == 10
    assert dead_connection_options(connection.connection.info.get_parameters()) == DEFAULT_OPTIONS


@pytest.mark.django_db
def test_the_workers_pool_connections_carry_them_too():
    """portal/worker.py's connector, built as ``run`` builds it (from Django's OPTIONS)."""
    from procrastinate.contrib.django.utils import connector_params
    from procrastinate.psycopg_connector import PsycopgConnector

    async def parameters_of_a_pool_connection() -> dict:
        connector = PsycopgConnector(kwargs=connector_params("default"), min_size=1, max_size=1)
        await connector.open_async()
        try:
            async with connector.pool.connection() as pooled:
                return pooled.info.get_parameters()
        finally:
            await connector.close_async()

    assert dead_connection_options(asyncio.run(parameters_of_a_pool_connection())) == DEFAULT_OPTIONS


def settings_options(**env) -> dict:
    """The database OPTIONS a fresh process computes from ``env``."""
    script = "import django; django.setup(); from django.conf import settings; print(settings.DATABASES['default']['OPTIONS'])"
    finished = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings", "DEBUG": "true", **env},
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    return ast.literal_eval(finished.stdout.strip().splitlines()[-1])


def test_the_bound_follows_the_setting_and_a_value_in_database_url_wins():
    url = "postgres://portal@db.example:5432/portal?keepalives_count=5"
    options = settings_options(DATABASE_DEAD_CONNECTION_SECONDS="30", DATABASE_URL=url)

    assert (options["keepalives_idle"], options["keepalives_interval"], options["tcp_user_timeout"]) == (12, 6, 30000)
    assert options["keepalives_count"] == 5  # the URL's
    assert options["keepalives_idle"] + 3 * options["keepalives_interval"] == 30


def test_a_bound_under_a_second_is_refused_naming_the_variable():
    finished = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings", "DEBUG": "true", "DATABASE_DEAD_CONNECTION_SECONDS": "0"},
    )
    assert finished.returncode != 0
    assert "DATABASE_DEAD_CONNECTION_SECONDS=0 must be 1 or more" in finished.stderr


# --- a real cut -------------------------------------------------------------------------------------------

BOUND = 2  # DATABASE_DEAD_CONNECTION_SECONDS for the client
# The client's query fails within this after the cut (the bound, plus a probe's second and slack
# for a loaded machine); without the options it would wait ~15 minutes.
WITHIN = BOUND + 6

CLIENT = textwrap.dedent(
    """
    import sys, time
    import django
    django.setup()
    from django.db import OperationalError, connection
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        print(cursor.fetchone()[0], flush=True)
    query = "SELECT pg_sleep(60)" if sys.argv[1] == "waiting" else "SELECT 1"
    if sys.argv[1] == "sending":
        sys.stdin.readline()  # the network is cut now
    started = time.monotonic()
    try:
        with connection.cursor() as cursor:
            cursor.execute(query)
        print("answered", flush=True)
    except OperationalError as exc:
        print(f"failed after {time.monotonic() - started:.1f} s: {str(exc).strip().splitlines()[0]}", flush=True)
    """
)


def _can_cut() -> str:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (network namespaces, tc)"
    if not (shutil.which("ip") and shutil.which("tc")):
        return "needs iproute2's ip and tc"
    return ""


@contextmanager
def isolated_network():
    """A network namespace joined to this one by a veth pair (198.18.0.0/15, the range set aside
    for tests); yields (namespace, host address, namespace device). Deleting the namespace
    deletes the pair."""
    pid = os.getpid()
    namespace, host_device, inner_device = f"pgcut{pid}", f"pgc{pid}h", f"pgc{pid}n"
    base = f"198.{18 + (pid >> 14) % 2}.{(pid >> 6) % 256}.{(pid % 64) * 4}"
    prefix, last = base.rsplit(".", 1)
    host_address, inner_address = f"{prefix}.{int(last) + 1}", f"{prefix}.{int(last) + 2}"

    def run(*command: str) -> None:
        subprocess.run(command, check=True, capture_output=True, timeout=10)

    try:
        run("ip", "netns", "add", namespace)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace here: {exc.stderr.decode().strip()}")
    try:
        run("ip", "link", "add", host_device, "type", "veth", "peer", "name", inner_device)
        run("ip", "link", "set", inner_device, "netns", namespace)
        run("ip", "addr", "add", f"{host_address}/30", "dev", host_device)
        run("ip", "link", "set", host_device, "up")
        run("ip", "netns", "exec", namespace, "ip", "addr", "add", f"{inner_address}/30", "dev", inner_device)
        run("ip", "netns", "exec", namespace, "ip", "link", "set", inner_device, "up")
        yield namespace, host_address, inner_device
    finally:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=10)


@contextmanager
def relay_to_the_database(address: str):
    """A TCP port on ``address`` relaying each connection to the test database (its Unix socket
    or its TCP port): the client's traffic crosses the veth pair. Yields the port."""
    params = connection.get_connection_params()
    host, port = params.get("host") or "localhost", int(params.get("port") or 5432)
    listener = socket.create_server((address, 0))
    relayed: list[socket.socket] = []

    def upstream() -> socket.socket:
        if host.startswith("/"):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(f"{host}/.s.PGSQL.{port}")
            return sock
        return socket.create_connection((host, port))

    def pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass

    def serve() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = upstream()
            relayed.extend((client, server))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=pump, args=(source, target), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        for sock in relayed:
            sock.close()


def run_client_and_cut(case: str, *, url_query: str = "") -> tuple[str, float]:
    """Start the client in its namespace, cut its network at the moment ``case`` names (while its
    query waits for the answer, or just before it sends one); return what it printed and how long
    after the cut it ended (or the time waited, if it did not)."""
    with isolated_network() as (namespace, host_address, device), relay_to_the_database(host_address) as port:
        name = connection.settings_dict["NAME"]
        client_env = {
            **os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings", "DEBUG": "true",
            "DATABASE_URL": f"postgres://{connection.settings_dict['USER']}@{host_address}:{port}/{name}{url_query}",
            "DATABASE_DEAD_CONNECTION_SECONDS": str(BOUND),
        }
        client = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", CLIENT, case], cwd=ROOT, env=client_env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            backend = int(client.stdout.readline() or 0)
            assert backend, client.stderr.read()[-3000:]
            if case == "waiting":
                _wait_until_active(backend, "pg_sleep")
            subprocess.run(["ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", device, "root", "blackhole"],
                           check=True, capture_output=True, timeout=10)
            cut = time.monotonic()
            if case == "sending":
                client.stdin.write("\n")
                client.stdin.flush()
            try:
                output, _ = client.communicate(timeout=WITHIN + 2)
            except subprocess.TimeoutExpired:
                return "still waiting", time.monotonic() - cut
            return output.strip(), time.monotonic() - cut
        finally:
            client.kill()
            client.wait(timeout=10)
            with connection.cursor() as cursor:  # its server side, still sleeping or idle
                cursor.execute("SELECT pg_terminate_backend(%s)", [backend])


def _wait_until_active(backend: int, query: str) -> None:
    """Until the server runs ``query`` for ``backend``: it has received it, so the client waits
    only for the answer when the network is cut."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT query FROM pg_stat_activity WHERE pid = %s AND state = 'active'", [backend])
            row = cursor.fetchone()
        if row and query in row[0]:
            return
        time.sleep(0.05)
    raise AssertionError(f"backend {backend} never ran {query}")


needs_root = pytest.mark.skipif(bool(_can_cut()), reason=_can_cut() or "")


@needs_root
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", ["waiting", "sending"])
def test_a_query_on_a_cut_network_fails_within_the_bound_instead_of_hanging(case):
    """waiting: the query reached the server and the answer never comes (the keepalives find the
    silence); sending: the query never reaches it (tcp_user_timeout gives up on it)."""
    output, seconds = run_client_and_cut(case)

    assert output.startswith("failed after"), output
    assert seconds < WITHIN, (output, seconds)


@needs_root
@pytest.mark.django_db(transaction=True)
def test_without_the_options_the_same_query_is_still_waiting_past_the_bound():
    """The cut itself holds (so the test above can fail): with keepalives and the user timeout
    turned off in DATABASE_URL's query (which wins over the setting), the query just waits."""
    output, seconds = run_client_and_cut("waiting", url_query="?keepalives=0&tcp_user_timeout=0")

    assert output == "still waiting" and seconds >= WITHIN, (output, seconds)

