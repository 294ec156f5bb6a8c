"""Rate limits of the public API's feedback endpoints."""

from __future__ import annotations

from django.conf import settings
from rest_framework.throttling import ScopedRateThrottle


class FeedbackRateThrottle(ScopedRateThrottle):
    """DRF's ScopedRateThrottle (per signed-in user, else per client address, counted in the default cache), with
    the rate read from settings.FEEDBACK_THROTTLE_RATES on each request, so a deploy or a test can change it.

    Not per client key: a client picks its session and X-Client-Id, but not its address.
    """

    def get_rate(self):
        return settings.FEEDBACK_THROTTLE_RATES.get(self.scope)
