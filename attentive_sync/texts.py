"""One-off texts through ``POST /v1/text/send``, each recorded once by its form's key.

A text cannot be taken back, and Attentive documents no dedup for this endpoint, so each send
is keyed by the key of the form it came from (``TextSend.idempotency_key``, unique): the row is
claimed before Attentive is called, and a second submit of the same form (a double click, a
browser's "resend" after a refresh) finds it and sends nothing. The row keeps what was sent
and Attentive's answer, the audit of texts sent from the portal.

The model lives here, not in models.py, so this feature is one module (as ``segments``);
``attentive_sync.admin`` imports it at start-up, which registers it with the app.
"""

from __future__ import annotations

from django.db import IntegrityError, models, transaction
from django.utils import timezone

from attentive_sync.client import AttentiveClient
from attentive_sync.errors import AttentiveError


class TextSend(models.Model):
    class State(models.TextChoices):
        SENDING = "sending"  # claimed; Attentive not answered yet (or the process died asking)
        SENT = "sent"
        FAILED = "failed"

    idempotency_key = models.UUIDField("idempotency key", unique=True, editable=False)
    to = models.CharField(max_length=32, help_text="The phone number texted.")
    body = models.TextField()
    subscription_type = models.CharField(max_length=30)
    state = models.CharField(max_length=10, choices=State.choices, default=State.SENDING)
    answer = models.JSONField("Attentive's answer", default=dict, blank=True)
    error = models.TextField(blank=True)
    requested_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "attentive_sync"
        ordering = ["-requested_at"]

    def __str__(self) -> str:
        return f"Text to {self.to} ({self.state})"


def text_send(
    *, idempotency_key, to: str, body: str, subscription_type: str, client: AttentiveClient
) -> tuple[TextSend, bool]:
    """Send one text, once per ``idempotency_key``; returns its record and whether this call
    sent it (False: the key was used before, and that record is returned as it stands)."""
    try:
        with transaction.atomic():
            record = TextSend.objects.create(
                idempotency_key=idempotency_key, to=to, body=body, subscription_type=subscription_type
            )
    except IntegrityError:
        return TextSend.objects.get(idempotency_key=idempotency_key), False
    try:
        record.answer = client.send_text(to=to, body=body, subscription_type=subscription_type)
        record.state = TextSend.State.SENT
    except AttentiveError as exc:
        record.state, record.error = TextSend.State.FAILED, str(exc)
    record.finished_at = timezone.now()
    record.save(update_fields=["answer", "state", "error", "finished_at"])
    return record, True
