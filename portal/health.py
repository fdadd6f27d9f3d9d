"""``/healthz``: is the database reachable and has a worker sent a heartbeat recently?"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from procrastinate.contrib.django.models import ProcrastinateWorker


def _database_check() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        return {"ok": False, "detail": f"database unreachable: {exc.__class__.__name__}"}
    return {"ok": True}


def _worker_check() -> dict:
    max_age = timedelta(seconds=settings.WORKER_HEARTBEAT_MAX_AGE_SECONDS)
    try:
        last = ProcrastinateWorker.objects.order_by("-last_heartbeat").values_list("last_heartbeat", flat=True).first()
    except DatabaseError:
        return {"ok": False, "detail": "worker heartbeats unreadable: database unreachable"}
    if last is None:
        return {"ok": False, "detail": "no worker has ever sent a heartbeat; start one with `manage.py procrastinate worker`"}
    age = timezone.now() - last
    check = {"ok": age <= max_age, "last_heartbeat": last.isoformat(), "age_seconds": round(age.total_seconds(), 1)}
    if not check["ok"]:
        check["detail"] = f"last worker heartbeat is older than {max_age.total_seconds():.0f}s"
    return check


@require_GET
def healthz(request):
    database = _database_check()
    worker = _worker_check() if database["ok"] else {"ok": False, "detail": "not checked: database unreachable"}
    healthy = database["ok"] and worker["ok"]
    return JsonResponse(
        {"status": "ok" if healthy else "unhealthy", "checks": {"database": database, "worker": worker}},
        status=200 if healthy else 503,
    )
