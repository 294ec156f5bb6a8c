"""Benchmark-only settings: the product settings plus a stand-in for the REST endpoints.

Used by `scripts/bench.py --stub-api` only, to exercise the benchmark before webapp/api lands.
Never used by the product.
"""

from webapp.settings import *  # noqa: F401,F403

ROOT_URLCONF = "bench_stub_urls"
