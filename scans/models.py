"""A scan is a stored job; each submitted URL is one Result row of it."""

from __future__ import annotations

import hashlib
import secrets
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce


class ScanQuerySet(models.QuerySet):
    def with_cancelled_rows(self) -> ScanQuerySet:
        """Each scan with ``cancelled_rows``: its rows that a cancel ended before they were
        fetched (a count of few rows a scan, through the scan-and-state index)."""
        ended = Result.objects.filter(
            scan=OuterRef("pk"), state=Result.ERROR, error=Result.CANCELLED
        )
        count = ended.order_by().values("scan").annotate(n=Count("pk")).values("n")
        return self.annotate(cancelled_rows=Coalesce(Subquery(count), 0))


class Scan(models.Model):
    QUEUED, RUNNING, DONE, CANCELLED = "queued", "running", "done", "cancelled"
    STATUSES = [(s, s) for s in (QUEUED, RUNNING, DONE, CANCELLED)]
    ACTIVE = (QUEUED, RUNNING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.CASCADE, null=True, blank=True, related_name="scans"
    )
    # An anonymous visitor's key, kept in their session; survives login's key change.
    visitor_key = models.CharField(max_length=64, blank=True, db_index=True)
    concurrency = models.PositiveIntegerField()
    timeout_s = models.FloatField()
    status = models.CharField(max_length=10, choices=STATUSES, default=QUEUED, db_index=True)
    total = models.PositiveIntegerField()
    done = models.PositiveIntegerField(default=0)
    total_bytes = models.BigIntegerField(default=0)
    sum_ms = models.FloatField(default=0)
    # Grows by one with every progress message, so a page can see a gap.
    seq = models.PositiveBigIntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    objects = ScanQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        if self.status == self.CANCELLED:  # its done/total counts the rows the cancel ended
            return f"Scan {self.id} (cancelled, of {self.total})"
        return f"Scan {self.id} ({self.status}, {self.done}/{self.total})"

    @property
    def fetched(self) -> int:
        """Rows fetched so far. ``done`` counts the rows a cancel ended too (the scan is over),
        and ``cancelled_rows`` comes from ``with_cancelled_rows()`` or whoever read them."""
        return self.done - self.cancelled_rows

    @property
    def wall_ms(self) -> float | None:
        if self.started and self.finished:
            return round((self.finished - self.started).total_seconds() * 1000, 1)
        return None

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    def owned_by(self, user, visitor_key: str | None) -> bool:
        if user is not None and user.is_authenticated:
            return user.is_staff or self.owner_id == user.id
        return self.owner_id is None and bool(visitor_key) and visitor_key == self.visitor_key


# The error classes people read on the page, where the API's names read poorly.
# "connect" is a connection refused, or one closed or reset before the answer was whole.
ERROR_LABELS = {"dns": "DNS", "tls": "TLS", "connect": "connection failed", "other": "error"}


class Result(models.Model):
    PENDING, OK, ERROR = "pending", "ok", "error"
    STATES = [(s, s) for s in (PENDING, OK, ERROR)]
    # The error of a row that a cancel ended before it was fetched.
    CANCELLED = "cancelled"

    # No index of its own: the two below start with the scan (see migration 0004).
    scan = models.ForeignKey(Scan, models.CASCADE, related_name="results", db_index=False)
    position = models.PositiveIntegerField()
    url = models.TextField()
    state = models.CharField(max_length=8, choices=STATES, default=PENDING)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    size = models.BigIntegerField(null=True, blank=True)
    wire_size = models.BigIntegerField(null=True, blank=True)
    content_type = models.CharField(max_length=200, blank=True)
    ttfb_ms = models.FloatField(null=True, blank=True)
    elapsed_ms = models.FloatField(null=True, blank=True)
    start_ms = models.FloatField(null=True, blank=True)
    final_url = models.TextField(blank=True)
    redirects = models.PositiveSmallIntegerField(default=0)
    error = models.CharField(max_length=20, null=True, blank=True)  # noqa: DJ001 - null: no error
    error_message = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The worker fetching this row now, and until when its claim holds.
    claimed_by = models.CharField(max_length=64, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    # The worker whose result was written: which process did what, after a crash.
    fetched_by = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["scan", "position"], name="one_result_per_position")
        ]
        indexes = [models.Index(fields=["scan", "state", "position"])]

    def __str__(self) -> str:
        return f"{self.position}: {self.url}"

    @property
    def is_cancelled(self) -> bool:
        return self.error == self.CANCELLED

    @property
    def error_label(self) -> str:
        """The error class as the live page shows it (static/scans/table.js: errorLabel)."""
        return ERROR_LABELS.get(self.error or "", (self.error or "").replace("_", " "))


class ScanWorker(models.Model):
    """A worker fetching a scan's URLs now. The scan's concurrency is shared among them.

    Each worker renews its row as it renews its claims; a worker that dies stops
    counting when its lease runs out.
    """

    scan = models.ForeignKey(Scan, models.CASCADE, related_name="workers", db_index=False)
    worker_id = models.CharField(max_length=64)
    lease_until = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scan", "worker_id"], name="one_row_per_scan_worker")
        ]

    def __str__(self) -> str:
        return f"{self.worker_id} on {self.scan_id}"


class ApiToken(models.Model):
    """A per-user key for the JSON API. Only its SHA-256 is stored; the user sees it once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    digest = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=8)
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def digest_of(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    @classmethod
    def issue(cls, user, name: str) -> tuple[ApiToken, str]:
        key = secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, name=name, digest=cls.digest_of(key), prefix=key[:8])
        return token, key
