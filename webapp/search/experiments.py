"""A/B before activation: which model version serves a shopper, how many result lists each version served, and
the comparison the admin decides on.

A candidate version (state candidate, `ab_share` > 0, its vectors in its own collection) serves a share of
shoppers. The split is sticky: a shopper's client key hashes (with the candidate's name as salt, so every
experiment draws a fresh split) to a fixed point in [0, 1), and the shopper gets the candidate while that point
lies under the share. Raising the share keeps everyone already on the candidate there.

Shopper identity (`client_key_for`) is a keyed hash, never the raw session key, user id or address.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Count, F, Sum
from django.utils import timezone
from django.utils.crypto import salted_hmac

from webapp.search import registry
from webapp.search.models import ModelVersion, ServedCount, ShopperEvent

logger = logging.getLogger(__name__)

Surface = ShopperEvent.Surface
CLIENT_ID_HEADER = "HTTP_X_CLIENT_ID"
CLIENT_ID_PATTERN = re.compile(r"^[\x21-\x7e]{8,200}$")  # printable ASCII, no spaces


# Who is asking --------------------------------------------------------------------------------
def client_key_for(request, *, create_session: bool = False) -> str:
    """A stable, privacy-preserving key of the shopper (64 hex characters), the same on every request.

    The signed-in user when there is one, else the session, else an `X-Client-Id` header (API clients that keep
    no cookies), else — for pages, `create_session=True` — a new session, else the client address. Only a keyed
    hash (HMAC with SECRET_KEY) is returned, so the key cannot be turned back into a session or an address.
    """
    django_request = getattr(request, "_request", request)  # a DRF Request wraps Django's
    user = getattr(request, "user", None)
    session = getattr(django_request, "session", None)
    header = django_request.META.get(CLIENT_ID_HEADER, "")
    if user is not None and user.is_authenticated:
        identity = f"user:{user.pk}"
    elif session is not None and session.session_key:
        identity = f"session:{session.session_key}"
    elif CLIENT_ID_PATTERN.match(header):
        identity = f"client:{header}"
    elif session is not None and create_session:
        session.create()  # the session middleware sends its cookie with this response
        identity = f"session:{session.session_key}"
    else:
        identity = f"address:{django_request.META.get('REMOTE_ADDR', '')}"
    return salted_hmac("webapp.search.client-key", identity, algorithm="sha256").hexdigest()


# Which version serves ----------------------------------------------------------------------------
def client_bucket(*, client_key: str, salt: str) -> float:
    """The shopper's fixed point in [0, 1) for one experiment (salt: the candidate's name)."""
    digest = hashlib.sha256(f"{salt}\x00{client_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def serving_version_for(*, client_key: str) -> ModelVersion | None:
    """The version that answers this shopper: the candidate for its sticky share, the active version otherwise.

    Read-only (cached lookups). None until a version is active: reads then answer empty.
    """
    active = registry.active_version()
    if active is None:
        return None
    candidate = registry.candidate_version()
    if candidate is None or candidate.pk == active.pk:
        return active
    share = min(max(float(candidate.ab_share), 0.0), 1.0)
    if client_bucket(client_key=client_key, salt=candidate.model_version) < share:
        return candidate
    return active


# How many result lists each version served --------------------------------------------------------
# The rates' denominator. One ShopperEvent row per response would be a write on every search and product page
# view, and a table as large as the traffic; a cache counter needs a flusher and loses everything with a
# per-process cache. Instead each process adds to an in-memory Counter (a dict increment per response) and
# adds it to one ServedCount row per (day, version, surface) with an UPDATE ... SET served = served + n at most
# every SERVED_COUNTS_FLUSH_SECONDS. What a process has not flushed when it dies (at most those seconds of its
# traffic) is lost; a rate is a ratio, so a few lost responses of both arms do not bias it.
_served_lock = threading.Lock()
_served_pending: Counter[tuple[date, str, str]] = Counter()
_served_last_flush = time.monotonic()


def served_record(*, version: ModelVersion | None, surface: str) -> None:
    """Count one result list served by `version` on `surface` (a product page's row, a photo search)."""
    global _served_last_flush
    if version is None:
        return
    with _served_lock:
        _served_pending[(timezone.localdate(), version.model_version, surface)] += 1
        due = time.monotonic() - _served_last_flush >= settings.SERVED_COUNTS_FLUSH_SECONDS
    if due:
        served_counts_flush()


def served_counts_flush() -> int:
    """Add this process's pending counts to the database; returns how many responses were written.

    Never raises: a database error keeps the counts for the next flush (a shopper's request must not fail on it).
    """
    global _served_last_flush
    with _served_lock:
        pending = dict(_served_pending)
        _served_pending.clear()
        _served_last_flush = time.monotonic()
    written = 0
    try:
        for (day, model_version, surface), count in pending.items():
            _served_add(day, model_version, surface, count)
            written += count
            pending[(day, model_version, surface)] = 0
    except DatabaseError:
        logger.warning("served counts not written yet; kept for the next flush", exc_info=True)
        with _served_lock:
            _served_pending.update({key: n for key, n in pending.items() if n})
    return written


def _served_add(day: date, model_version: str, surface: str, count: int) -> None:
    rows = ServedCount.objects.filter(day=day, model_version=model_version, surface=surface)
    if rows.update(served=F("served") + count):
        return
    try:
        with transaction.atomic():
            ServedCount.objects.create(day=day, model_version=model_version, surface=surface, served=count)
    except IntegrityError:  # another process created the row meanwhile
        rows.update(served=F("served") + count)


# The comparison -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SurfaceStats:
    surface: str
    served: int
    clicks: int
    marks: int

    @property
    def label(self) -> str:
        return Surface(self.surface).label

    @property
    def click_rate(self) -> float | None:
        return self.clicks / self.served if self.served else None

    @property
    def mark_rate(self) -> float | None:
        return self.marks / self.served if self.served else None

    @property
    def click_rate_text(self) -> str:
        return _percent(self.click_rate)

    @property
    def mark_rate_text(self) -> str:
        return _percent(self.mark_rate)


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.2%}"


@dataclass
class ArmSummary:
    """One version in the comparison: its role, share, what shoppers did with its results and its offline recall."""

    version: ModelVersion
    role: str  # "active", "candidate" or "previous" (the latest standby: what a rollback would restore)
    share: float
    surfaces: list[SurfaceStats]
    offline: dict[str, float] = field(default_factory=dict)
    offline_split: str = ""

    @property
    def total(self) -> SurfaceStats:
        return SurfaceStats(
            "all",
            sum(s.served for s in self.surfaces),
            sum(s.clicks for s in self.surfaces),
            sum(s.marks for s in self.surfaces),
        )


@dataclass(frozen=True)
class Difference:
    """Candidate minus active for one rate, with a two-proportion z-test (|z| >= 1.96: unlikely to be chance)."""

    surface: str
    rate: str
    difference: float
    z: float

    @property
    def significant(self) -> bool:
        return abs(self.z) >= 1.96

    @property
    def difference_text(self) -> str:
        return f"{100 * self.difference:+.2f} points"


RECALL_KEYS = ("recall@1", "recall@5", "recall@20")


def offline_recall(metrics: dict) -> tuple[str, dict[str, float]]:
    """(split, {recall@K: value}) from a version's metrics: the test split's final numbers when there are any."""
    final = metrics.get("final")
    final = final if isinstance(final, dict) else {}
    candidates = [("test", final.get("test")), ("val", final.get("val")), ("test", metrics.get("test"))]
    candidates += [("val", metrics.get("val")), ("", metrics)]
    for split, values in candidates:
        if isinstance(values, dict) and any(isinstance(values.get(k), (int, float)) for k in RECALL_KEYS):
            return split, {k: float(values[k]) for k in RECALL_KEYS if isinstance(values.get(k), (int, float))}
    return "", {}


def compared_versions() -> list[tuple[str, ModelVersion]]:
    """The versions worth comparing: the active one, the candidate (any share), else the latest standby."""
    found: list[tuple[str, ModelVersion]] = []
    active = ModelVersion.objects.filter(state=ModelVersion.State.ACTIVE).order_by("-activated_at", "-id").first()
    if active is not None:
        found.append(("active", active))
    candidate = ModelVersion.objects.filter(state=ModelVersion.State.CANDIDATE).order_by("-updated_at", "-id").first()
    if candidate is not None:
        found.append(("candidate", candidate))
    else:
        previous = (
            ModelVersion.objects.filter(state=ModelVersion.State.STANDBY).order_by("-deactivated_at", "-id").first()
        )
        if previous is not None:
            found.append(("previous", previous))
    return found


def experiment_compare(*, days: int = 14) -> tuple[list[ArmSummary], list[Difference], datetime]:
    """What shoppers did with each compared version's results over the last `days` days, beside offline recall.

    Returns (arms, candidate-vs-active differences, the start of the window).
    """
    since = timezone.now() - timedelta(days=days)
    versions = compared_versions()
    names = [version.model_version for _, version in versions]
    served = Counter(
        {
            (row["model_version"], row["surface"]): row["total"]
            for row in ServedCount.objects.filter(day__gte=timezone.localdate(since), model_version__in=names)
            .values("model_version", "surface")
            .annotate(total=Sum("served"))
        }
    )
    events = Counter(
        {
            (row["model_version"], row["surface"], row["kind"]): row["total"]
            for row in ShopperEvent.objects.filter(created_at__gte=since, model_version__in=names)
            .values("model_version", "surface", "kind")
            .annotate(total=Count("id"))
        }
    )
    arms = []
    for role, version in versions:
        name = version.model_version
        split, recall = offline_recall(version.metrics or {})
        surfaces = [
            SurfaceStats(
                surface,
                served[(name, surface)],
                events[(name, surface, ShopperEvent.Kind.CLICK)],
                events[(name, surface, ShopperEvent.Kind.NOT_SIMILAR)],
            )
            for surface in Surface.values
        ]
        share = float(version.ab_share) if role == "candidate" else 0.0
        arms.append(ArmSummary(version, role, share, surfaces, recall, split))
    return arms, _differences(arms), since


def _z(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    pooled = (hits_a + hits_b) / (n_a + n_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    return (hits_a / n_a - hits_b / n_b) / spread if spread else 0.0


def _differences(arms: list[ArmSummary]) -> list[Difference]:
    by_role = {arm.role: arm for arm in arms}
    if "active" not in by_role or "candidate" not in by_role:
        return []
    found = []
    pairs = zip(by_role["candidate"].surfaces, by_role["active"].surfaces, strict=True)
    for candidate, active in pairs:
        if not (candidate.served and active.served):
            continue
        for rate, hits in (("click", "clicks"), ("not similar", "marks")):
            c_hits, a_hits = getattr(candidate, hits), getattr(active, hits)
            # A click can repeat within one served list, so a rate can pass 1; the z-test needs proportions.
            if c_hits > candidate.served or a_hits > active.served:
                continue
            difference = c_hits / candidate.served - a_hits / active.served
            found.append(
                Difference(candidate.surface, rate, difference, _z(c_hits, candidate.served, a_hits, active.served))
            )
    return found
