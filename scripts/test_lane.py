"""The environment of a second test run alongside the first (`make test` runs two at once): its own test state
folder, PostgreSQL database and Redis databases, so neither run flushes or truncates what the other uses.

    python scripts/test_lane.py NAME   ->   KEY=VALUE lines for `env` (only the keys that change)

From the current environment: DATABASE_URL's database name gets `_NAME` appended (pytest-django then creates
test_<name>_NAME; an SQLite file gets the suffix before its extension, the embedded default lives in the run's own
VAR_DIR); each Redis URL (CELERY_BROKER_URL, TEST_REDIS_URL, CACHE_URL) moves to database (N + 8) mod 16, so URLs
that differ among themselves and lie within 8 of each other stay apart from the first run's; TEST_VAR_DIR becomes
var/test-NAME.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit, urlunsplit

REDIS_KEYS = ("CELERY_BROKER_URL", "TEST_REDIS_URL", "CACHE_URL")
REDIS_DATABASES = 16  # Redis' default `databases`


def database_url(url: str, name: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme.startswith("postgres"):
        return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}_{name}"))
    if parts.scheme == "sqlite" and parts.path.strip("/") not in ("", ":memory:"):
        # The string itself: urlunsplit would drop the empty authority of sqlite:////absolute/path.
        stem, dot, extension = url.rpartition(".")
        return f"{stem}_{name}.{extension}" if dot and "/" not in extension else f"{url}_{name}"
    return None


def redis_url(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme.startswith("redis"):
        return None
    number = parts.path.strip("/") or "0"
    if not number.isdigit():
        raise SystemExit(f"cannot read the Redis database number of {url!r}")
    return urlunsplit(parts._replace(path=f"/{(int(number) + 8) % REDIS_DATABASES}"))


def lane_environment(name: str, environ: dict[str, str]) -> dict[str, str]:
    changes = {"TEST_VAR_DIR": f"var/test-{name}"}
    if environ.get("DATABASE_URL"):
        moved = database_url(environ["DATABASE_URL"], name)
        if moved is not None:
            changes["DATABASE_URL"] = moved
    for key in REDIS_KEYS:
        moved = redis_url(environ.get(key, ""))
        if moved is not None:
            changes[key] = moved
    return changes


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isidentifier():
        raise SystemExit("usage: python scripts/test_lane.py NAME  (letters, digits, _)")
    for key, value in lane_environment(sys.argv[1], dict(os.environ)).items():
        print(f"{key}={value}")
