"""``python manage.py issue_credentials --channel ID --offers ID[,ID…] (--members ID[,ID…] | --all-enrolled)``

Issues a credential to each member (Sparkfly ids throughout) with the same service as the admin,
in the foreground, printing one line per member: ``member <id>: <code>``, or the reason it was
refused or failed. The run is a batch, visible in the admin; it exits non-zero when any member
failed (not when one was refused), and running it again with the ``--idempotency-key`` it
printed retries only those, never issuing twice. Without ``--idempotency-key`` the key is
derived from the channel, the offers and the members, so the same command run twice (a
rerun after a lost terminal, a double paste) is one batch; a deliberate second issuance of
the same offers to the same members needs a new key (``--idempotency-key $(uuidgen)``).
"""

from __future__ import annotations

import uuid

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from sparkfly_sync import issuance
from sparkfly_sync.client import client_from_settings
from sparkfly_sync.models import IssuanceRequest


def id_list(text: str) -> list[int]:
    """``"12,34"`` → ``[12, 34]``; anything but positive whole numbers is refused."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError(text)
    return [int(part) for part in parts]


# Fixed for ever: keys derived from it must stay the same across releases.
COMMAND_KEY_NAMESPACE = uuid.UUID("5b1e7d3a-8c4f-4e0a-b6d2-93f1a7c0e5d4")


def default_key(*, channel: int, offers: list[int], member_ids: list[int]) -> uuid.UUID:
    """The same for the same channel, offers (in any order) and members (in their order, which
    is the batch's), so running the same command again resumes its batch instead of issuing twice."""
    selection = f"channel={channel};offers={','.join(map(str, sorted(set(offers))))};members={','.join(map(str, dict.fromkeys(member_ids)))}"
    return uuid.uuid5(COMMAND_KEY_NAMESPACE, selection)


def positive_id(text: str) -> int:
    [value] = id_list(text)
    return value


class Command(BaseCommand):
    help = "Issue a Sparkfly credential for the given offers to each member, printing each code or refusal."

    def add_arguments(self, parser):
        # No abbreviations: a scripted campaign should say exactly what it means.
        parser.allow_abbrev = False
        parser.add_argument("--channel", type=positive_id, required=True, metavar="ID", help="Sparkfly channel id")
        parser.add_argument("--offers", type=id_list, required=True, metavar="ID[,ID…]", help="Sparkfly offer ids")
        members = parser.add_mutually_exclusive_group(required=True)
        members.add_argument("--members", type=id_list, metavar="ID[,ID…]", help="Sparkfly member ids")
        members.add_argument(
            "--all-enrolled", action="store_true",
            help="every member with an active loyalty enrollment in the mirror",
        )
        parser.add_argument(
            "--program", type=positive_id, metavar="ID",
            help="with --all-enrolled: only members enrolled in this Sparkfly loyalty program",
        )
        parser.add_argument(
            "--idempotency-key", type=uuid.UUID, metavar="UUID",
            help="the key a previous run printed: members it settled are shown, not issued again "
            "(default: derived from the channel, offers and members; give a new one to issue the same again)",
        )

    def handle(self, *args, channel, offers, members, all_enrolled, program, idempotency_key, **options):
        if program is not None and not all_enrolled:
            raise CommandError("--program only applies with --all-enrolled")
        member_ids = members if members else issuance.enrolled_member_ids(program_id=program)
        if not member_ids:
            self.stdout.write("No member to issue to: the mirror has no active enrollment" + (
                f" in program {program}." if program is not None else "."
            ))
            return
        try:
            client = client_from_settings()
            batch, _ = issuance.issuance_batch_create(
                member_ids=member_ids, channel_id=channel, offer_ids=offers,
                idempotency_key=idempotency_key or default_key(channel=channel, offers=offers, member_ids=member_ids),
                in_background=False,
            )
        except (ImproperlyConfigured, issuance.IdempotencyKeyReused) as exc:
            raise CommandError(str(exc)) from exc
        if issuance.batch_being_run(batch):
            raise CommandError(f"Batch {batch.pk} of this key is running elsewhere right now; wait for it to finish.")
        # Before anything is issued: a run cut short (Ctrl-C, a lost session) is resumed with this
        # key, without issuing again to members it already settled.
        self.stderr.write(
            f"Batch {batch.pk}, idempotency key {batch.idempotency_key}: if this run is interrupted, run the "
            f"same command with --idempotency-key {batch.idempotency_key}."
        )
        # A rerun: done (or left running by a process that died) → queued.
        issuance.issuance_batch_retry(batch=batch, in_background=False)
        batch = issuance.issue_batch(batch.pk, client=client, on_result=self._report)
        if batch.failure:
            self.stderr.write(batch.failure)
        unsettled = batch.total - batch.issued - batch.refused
        if batch.failed or unsettled:
            raise CommandError(
                f"{batch.failed} failed and {unsettled - batch.failed} not settled of {batch.total} members; "
                f"run the same command with --idempotency-key {batch.idempotency_key} to retry them."
            )

    def _report(self, request: IssuanceRequest) -> None:
        if request.state == IssuanceRequest.State.ISSUED:
            self.stdout.write(f"member {request.member_id}: {request.code}")
        elif request.state == IssuanceRequest.State.PENDING:
            self.stdout.write(f"member {request.member_id}: pending — being issued by another process")
        else:
            self.stdout.write(f"member {request.member_id}: {request.state} — {request.reason}")
