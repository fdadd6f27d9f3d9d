"""``python manage.py runportal`` (what ``make run`` calls): the whole portal on one machine.

Migrates, makes sure a demo administrator exists, then starts and watches three processes:
the web server, the procrastinate worker and — when no Sparkfly credentials are configured —
the Sparkfly sandbox, which the web server and worker are then pointed at, and whose channels
and event notifications are pointed at the portal (`sparkfly_callbacks --apply`). Ctrl-C stops
all of them; if one dies, the others are stopped too, so nothing is left half-running.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

DEMO_ADMIN_USERNAME = "admin"


class Command(BaseCommand):
    help = "Start the web server, the worker and (without Sparkfly credentials) the Sparkfly sandbox."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--sandbox-port", type=int, default=int(os.environ.get("SANDBOX_PORT", "8100")))
        parser.add_argument(
            "--attentive-sandbox-port", type=int, default=int(os.environ.get("ATTENTIVE_SANDBOX_PORT", "8200"))
        )
        parser.add_argument("--sandbox-members", type=int, default=2000, help="members the sandbox is seeded with")

    def handle(self, *args, host, port, sandbox_port, attentive_sandbox_port, sandbox_members, **options):
        if not settings.DEBUG:
            raise CommandError(
                "runportal is for a developer's machine (it creates a demo administrator); "
                "set DEBUG=true, or run the web server and workers as a deployment does."
            )
        use_sandbox = not (settings.SPARKFLY_IDENTITY and settings.SPARKFLY_KEY)
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        use_attentive_sandbox = _attentive_is_unconfigured_or_a_sandbox()
        ports = [port] + ([sandbox_port] if use_sandbox else []) + ([attentive_sandbox_port] if use_attentive_sandbox else [])
        for busy in [p for p in ports if _port_in_use(host, p)]:
            raise CommandError(f"port {busy} is already in use; stop what uses it or pick another with PORT / SANDBOX_PORT")

        login = _ensure_demo_admin(Path(settings.DATA_DIR) / "demo-admin.txt")

        env = dict(os.environ)
        base = f"http://{host}:{port}"
        # Where the sandbox's callbacks reach this portal (a deployment sets its public URL).
        env.setdefault("PORTAL_PUBLIC_URL", base)
        manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
        processes: dict[str, list[str]] = {}
        if use_sandbox:
            sandbox_url = f"http://127.0.0.1:{sandbox_port}"
            env.update(SPARKFLY_API_URL=sandbox_url, SPARKFLY_IDENTITY="sandbox", SPARKFLY_KEY="sandbox")
            processes["sandbox"] = manage + [
                "sparkfly_sandbox", "--host", "127.0.0.1", "--port", str(sandbox_port), "--members", str(sandbox_members)
            ]
        if use_attentive_sandbox:
            attentive_url = f"http://127.0.0.1:{attentive_sandbox_port}"
            _point_attentive_at(attentive_url)
            processes["attentive sandbox"] = manage + [
                "attentive_sandbox", "--host", "127.0.0.1", "--port", str(attentive_sandbox_port)
            ]
        processes["web"] = manage + ["runserver", f"{host}:{port}"]
        processes["worker"] = manage + ["run_worker"]

        children = {name: subprocess.Popen(command, env=env) for name, command in processes.items()}
        self.stdout.write(self.style.SUCCESS("\nThe portal is starting:"))
        self.stdout.write(f"  portal      {base}/   login: {login}")
        self.stdout.write(f"  admin       {base}/admin/")
        self.stdout.write(f"  health      {base}/healthz")
        if use_sandbox:
            self.stdout.write(f"  sandbox     {sandbox_url}  (Sparkfly simulator, identity/key sandbox/sandbox)")
            self.stdout.write("  The worker mirrors the sandbox within a minute; `manage.py sync_sparkfly` does it now.")
        if use_attentive_sandbox:
            self.stdout.write(
                f"  attentive   {attentive_url}  (Attentive simulator; what it received: {attentive_url}/_sandbox/received)"
            )
        self.stdout.write("Press Ctrl-C to stop everything.\n")
        if use_sandbox:
            self._connect_sandbox(manage, env, sandbox_port)
        self._watch(children)

    def _connect_sandbox(self, manage: list[str], env: dict, sandbox_port: int) -> None:
        """Point the sandbox's channels and event notifications at this portal, so a redemption
        at the sandbox flows through the portal to Attentive with no setup by hand."""
        deadline = time.monotonic() + 30
        while not _port_in_use("127.0.0.1", sandbox_port):
            if time.monotonic() > deadline:
                self.stderr.write("the sandbox did not start listening within 30 s; callbacks not set up")
                return
            time.sleep(0.2)
        steps = [manage + ["sync_sparkfly", "channels"], manage + ["sparkfly_callbacks", "--apply"]]
        for step in steps:
            done = subprocess.run(step, env=env, stdout=subprocess.DEVNULL)
            if done.returncode != 0:
                self.stderr.write(f"`{' '.join(step[2:])}` failed; run it again once the portal is up")
                return
        self.stdout.write("  The sandbox's channels now call this portal on every redemption (sparkfly_callbacks).")

    def _watch(self, children: dict[str, subprocess.Popen]) -> None:
        # Explicit handlers: a process started with SIGINT ignored (a background job of a
        # non-interactive shell) would otherwise not stop on Ctrl-C; SIGTERM stops it too.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            while True:
                for name, child in children.items():
                    if child.poll() is not None:
                        raise CommandError(f"the {name} process exited with status {child.returncode}; stopping the rest")
                time.sleep(0.5)
        except KeyboardInterrupt:
            self.stdout.write("\nstopping…")
        finally:
            _stop_all(children.values())


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _attentive_is_unconfigured_or_a_sandbox() -> bool:
    """No Attentive key yet, or the settings point at a local sandbox: run one for them. A real
    configuration (any other URL) is never touched."""
    from attentive_sync.models import AttentiveSettings

    current = AttentiveSettings.load()
    return not current.key or current.api_url.startswith("http://127.0.0.1:")


def _point_attentive_at(url: str) -> None:
    from attentive_sync.models import AttentiveSettings

    current = AttentiveSettings.load()
    current.api_key, current.api_url, current.enabled = "sandbox", url, True
    current.save()


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host if host != "0.0.0.0" else "", port))
        except OSError:
            return True
    return False


def _ensure_demo_admin(login_file: Path) -> str:
    """Create the demo administrator once; its password lives in DATA_DIR (never in the repo).

    An existing "admin" account is never touched: it may be a real person's."""
    User = get_user_model()
    if User.objects.filter(username=DEMO_ADMIN_USERNAME).exists():
        if login_file.exists():
            return login_file.read_text().strip()
        return f"{DEMO_ADMIN_USERNAME} (an existing account; `manage.py changepassword admin` resets it)"
    password = secrets.token_urlsafe(12)
    User.objects.create_superuser(DEMO_ADMIN_USERNAME, "admin@example.com", password)
    login = f"{DEMO_ADMIN_USERNAME} / {password}"
    login_file.parent.mkdir(parents=True, exist_ok=True)
    login_file.write_text(login + "\n")
    login_file.chmod(0o600)
    return login


def _stop_all(children) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
