"""What the benchmarks share: a free loopback port, a scratch database, tables, and (for the
web benchmarks) a gunicorn server, child-process cleanup and percentiles."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Every benchmark runs the sandboxes on loopback, some with DEBUG off (as production does), where
# the outbound allowlist refuses loopback unless told (README "Outbound HTTP"); children inherit it.
os.environ.setdefault("OUTBOUND_ALLOW_LOOPBACK", "true")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def scratch_database() -> Iterator[None]:
    """A fresh, migrated database of this process's own for the benchmark's duration (so a
    concurrent `make test` keeps its test database), dropped afterwards."""
    from django.db import connection

    connection.settings_dict.setdefault("TEST", {})["NAME"] = f"bench_{os.getpid()}"
    name = connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        yield
    finally:
        connection.creation.destroy_test_db(name, verbosity=0)


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    width = max(len(row[0]) for row in rows)
    value_width = max(len(row[1]) for row in rows)
    print(f"\n{title}\n")
    print(f"{'measure':<{width}}  {'result':<{value_width}}  goal")
    print(f"{'-' * width}  {'-' * value_width}  ----")
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:<{value_width}}  {goal}")


# --- helpers of the ingest and latency benchmarks (web server, processes, percentiles) ----------


DEPLOYMENT_CONFIG = ROOT / "gunicorn.conf.py"
BARE_CONFIG = ROOT / "benchmarks" / "gunicorn_bare.conf.py"


@dataclass(frozen=True, kw_only=True)
class GunicornConfig:
    """How gunicorn serves an app. ``deployed`` has no default, so each benchmark says which:

    - bare (``deployed=False``): this command line and gunicorn's defaults, nothing else (no
      access log, no worker recycling): the reference comparisons of ingest and latency, the
      portal and the bare DRF app served alike;
    - deployed (``deployed=True``): the deployment's gunicorn.conf.py, as the Procfile runs it
      (JSON access log, worker recycling, its timeouts); only the bind address and the number
      of workers come from here."""

    workers: int
    deployed: bool
    worker_class: str = "sync"
    threads: int = 1

    @classmethod
    def for_this_machine(cls, *, deployed: bool) -> GunicornConfig:
        # gunicorn's documented starting point, (2 x cores) + 1 sync workers: a sync worker
        # blocks on every database round trip, so more processes than cores keep the CPUs busy.
        return cls(workers=2 * (os.cpu_count() or 1) + 1, deployed=deployed)

    def describe(self) -> str:
        if self.deployed:
            return f"gunicorn {self.workers} workers, gunicorn.conf.py"
        threads = f", {self.threads} threads each" if self.worker_class == "gthread" else ""
        return f"gunicorn {self.workers} {self.worker_class} workers{threads}, bare config"

    def command(self, app: str, port: int, *, pythonpath: str | None = None) -> list[str]:
        gunicorn = Path(sys.executable).with_name("gunicorn")
        command = [
            str(gunicorn) if gunicorn.exists() else "gunicorn", app,
            # Always a file: with --config unset or "", gunicorn reads ./gunicorn.conf.py.
            "--config", str(DEPLOYMENT_CONFIG if self.deployed else BARE_CONFIG),
            "--bind", f"127.0.0.1:{port}",
            "--workers", str(self.workers),
        ]
        if not self.deployed:
            command += [
                "--worker-class", self.worker_class,
                "--threads", str(self.threads),
                "--backlog", "2048",
                "--timeout", "60",
            ]
        if pythonpath:
            command += ["--pythonpath", pythonpath]
        return command


def start_gunicorn(
    app: str,
    config: GunicornConfig,
    env: dict[str, str],
    *,
    pythonpath: str | None = None,
    ready_path: str = "/",
    log_path: Path | None = None,
) -> tuple[subprocess.Popen, str]:
    """Serve ``app`` (``module:callable``) on a free loopback port; return once it answers
    (a benchmark's own warm-up then brings every worker up to speed)."""
    import requests

    port = free_port()
    with open(log_path or os.devnull, "ab") as log:  # the child keeps its own copy
        process = subprocess.Popen(
            config.command(app, port, pythonpath=pythonpath), cwd=ROOT, env=env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                detail = Path(log_path).read_text()[-2000:] if log_path else ""
                raise SystemExit(f"gunicorn ({app}) exited with status {process.returncode}\n{detail}")
            try:
                requests.get(url + ready_path, timeout=5, allow_redirects=False)
                return process, url
            # A read timeout too: a worker's first request (Django's lazy imports) can take
            # longer than 5 s on a machine this busy.
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.2)
        raise SystemExit(f"gunicorn ({app}) did not answer within 120 s")
    except BaseException:
        stop_processes([process])  # not yet the caller's to stop
        raise


def stop_processes(processes, timeout: float = 15) -> None:
    """SIGTERM each process still running, then SIGKILL any that outlive ``timeout``."""
    processes = [process for process in processes if process.poll() is None]
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (a CI timeout, `kill`) unwind as KeyboardInterrupt, so every
    `finally` runs: child processes stopped, the scratch database dropped. SIGINT is set
    explicitly: a background job of a non-interactive shell starts with it ignored."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)


def close_other_sessions() -> None:
    """End the sessions other processes still hold on this process's database (a killed
    child's backend can outlive it briefly), so the scratch database can be dropped."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


def percentile(values, fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.5 = p50) of ``values``; NaN if empty."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * fraction // 1))  # ceil(n * fraction), at least 1
    return ordered[min(len(ordered), int(rank)) - 1]


def find_program(name: str, *preferred_dirs: Path) -> str | None:
    """``name`` from the first of ``preferred_dirs`` that has it, else from PATH."""
    for directory in preferred_dirs:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def print_grid(title: str, headers: list[str], rows: list[list[str]], *, right: set[int] = frozenset()) -> None:
    """A table of any number of columns; columns whose index is in ``right`` are right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells) -> str:
        return "  ".join(
            f"{cell:>{width}}" if index in right else f"{cell:<{width}}"
            for index, (cell, width) in enumerate(zip(map(str, cells), widths))
        ).rstrip()

    print(f"\n{title}\n")
    print(line(headers))
    print(line("-" * width for width in widths))
    for row in rows:
        print(line(row))


class CpuMeter:
    """CPU used on this machine while it runs, to tell a benchmark's own load from other work
    on a shared machine: the whole machine (``/proc/stat``), and the processes outside this
    benchmark's process tree other than PostgreSQL (whose backends serve everyone). Linux only;
    elsewhere both read NaN."""

    def __init__(self) -> None:
        self._machine = self._busy()
        self._processes = self._cpu_by_process()
        self._started = time.monotonic()

    @staticmethod
    def _busy() -> tuple[float, float] | None:
        try:
            fields = [float(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except OSError:
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields) - idle, sum(fields)

    @staticmethod
    def _cpu_by_process() -> dict[int, tuple[int, str, float]]:
        """pid -> (parent pid, command line, CPU seconds)."""
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        processes = {}
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            processes[int(entry.name)] = (int(fields[1]), command, (int(fields[11]) + int(fields[12])) / ticks)
        return processes

    def stop(self) -> tuple[float, float]:
        """(machine busy, others' CPU), each as a share of one core (1.0 = one core's worth)."""
        elapsed = time.monotonic() - self._started
        machine = self._busy()
        cores = os.cpu_count() or 1
        if machine is None or self._machine is None or elapsed <= 0:
            return float("nan"), float("nan")
        busy = (machine[0] - self._machine[0]) / max(1e-9, machine[1] - self._machine[1]) * cores
        now = self._cpu_by_process()
        ours = {os.getpid()}
        changed = True
        while changed:  # this process's descendants, however deep
            changed = False
            for pid, (parent, _, _) in now.items():
                if parent in ours and pid not in ours:
                    ours.add(pid)
                    changed = True
        others = sum(  # a process started meanwhile counts whole (one gone by now is missed)
            cpu - (self._processes[pid][2] if pid in self._processes else 0.0)
            for pid, (_, command, cpu) in now.items()
            if pid not in ours and "postgres" not in command
        )
        return busy, others / elapsed


# --- a PostgreSQL server of the run's own (the chaos benchmark and the outage tests stop it) -------


class OwnPostgres:
    """A PostgreSQL cluster of this run's own, in ``directory``, on a free loopback TCP port:
    the server the chaos benchmark and the outage tests stop and start again. Never the shared
    embedded server (``portal/embedded_db.py``), whose other users would see their connections
    die. The same binaries (the ``pgserver`` package); as root, run as pgserver's own system
    user, as pgserver does. ``stop()`` is a fast shutdown (sessions ended, no crash recovery)."""

    DATABASE = "portal"

    def __init__(self, directory: Path) -> None:
        from pgserver import _commands

        self._commands = _commands
        self.data = Path(directory) / "pgdata"
        self.data.mkdir(parents=True)
        self.log = Path(directory) / "postgres.log"
        self.port = free_port()
        self._user = None
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            import pwd

            from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

            self._user = "pgserver"
            ensure_user_exists(self._user)
            ensure_prefix_permissions(self.data)
            entry = pwd.getpwnam(self._user)
            os.chown(self.data, entry.pw_uid, entry.pw_gid)
            self.log.touch()
            os.chown(self.log, entry.pw_uid, entry.pw_gid)
        self._commands.initdb(
            ["--auth=trust", "--encoding=utf8", "-U", "postgres"], pgdata=self.data, user=self._user
        )
        self.start()
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.DATABASE}"')

    def url(self, database: str | None = None, *, application_name: str = "") -> str:
        query = f"?application_name={application_name}" if application_name else ""
        return f"postgres://postgres@127.0.0.1:{self.port}/{database or self.DATABASE}{query}"

    def start(self) -> None:
        self._commands.pg_ctl(
            # authentication_timeout: a shutdown waits for every half-open connection's backend
            # (clients reconnecting in a storm) up to it; PostgreSQL's 60 s made a "fast" one last 60 s.
            ["-w", "-l", str(self.log), "-o",
             f"-h 127.0.0.1 -p {self.port} -k '' -c max_connections=200 -c authentication_timeout=5", "start"],
            pgdata=self.data, user=self._user, timeout=60,
        )

    def stop(self, *, fast_within: float = 20) -> str:
        """Stop the server: a fast shutdown, or — when that has not finished within
        ``fast_within`` seconds (a backend slow to end) — an immediate one (a crash, as far as
        the data knows: recovery runs at the next start). Returns the mode that stopped it."""
        import subprocess

        try:
            self._commands.pg_ctl(
                ["-w", "-t", str(int(fast_within)), "-m", "fast", "stop"], pgdata=self.data, user=self._user,
                timeout=fast_within + 10,
            )
            return "fast"
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            if not self.running():
                return "fast"
            self._commands.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.data, user=self._user, timeout=60)
            return "immediate"

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def close(self) -> None:
        if self.running():
            self._commands.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.data, user=self._user, timeout=60)
