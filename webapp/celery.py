"""The Celery app. Each Django app keeps its tasks in its own `tasks.py`; they call plain services.

A worker that consumes the `localize` queue loads the detector and runs one detection before it takes its first
photo: a shopper's search waits on that queue, and loading on first use made the first search after a worker
start take seconds (and time out into a 503 on a busy machine). The model loads where tasks run: in each prefork
child (`worker_process_init`), or in the worker process itself for the solo and thread pools (`worker_ready`);
never in a prefork parent, which forks children and must not hold CUDA.
"""

import logging
import os
import time

from celery import Celery
from celery.signals import worker_process_init, worker_ready

from webapp.broker import use_atomic_filesystem_transport

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
use_atomic_filesystem_transport()

app = Celery("visnet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

LOCALIZE_QUEUE = "localize"
IN_PROCESS_POOLS = ("celery.concurrency.solo", "celery.concurrency.threads")
logger = logging.getLogger(__name__)


def consumes_localize() -> bool:
    """Whether this worker was started to consume the localize queue (`-Q ...localize...`)."""
    return LOCALIZE_QUEUE in (app.amqp.queues.consume_from or {})


def warm_up_localization() -> float:
    """Load the detector and run one detection on a blank picture; returns the seconds it took."""
    from PIL import Image

    from webapp.search import registry

    started = time.perf_counter()
    detector = registry.detector()
    detector.detect(Image.new("RGB", (detector.input_size, detector.input_size), (128, 128, 128)))
    return time.perf_counter() - started


def _warm_up(where: str) -> None:
    if not consumes_localize():
        return
    try:
        seconds = warm_up_localization()
    except Exception:  # a missing or broken artifact: the task reports it per photo, the worker still starts
        logger.exception("localize worker: the detector could not be loaded ahead of the first photo (%s)", where)
        return
    logger.info("localize worker: detector loaded and warmed up in %.2f s (%s)", seconds, where)


@worker_process_init.connect
def _warm_up_prefork_child(**_) -> None:
    _warm_up("prefork child")


@worker_ready.connect
def _warm_up_in_process_pool(sender=None, **_) -> None:
    pool = getattr(sender, "pool", None)
    if pool is not None and type(pool).__module__ in IN_PROCESS_POOLS:
        _warm_up(type(pool).__module__.rsplit(".", 1)[-1] + " pool")
