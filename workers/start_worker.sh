#!/usr/bin/env bash
# Starts one Celery worker process of the project's app (webapp/celery.py) for a role:
#   workers/start_worker.sh [QUEUES] [extra celery args...]
# QUEUES defaults to CELERY_QUEUES or "ingest,default". Tasks live beside each Django app
# (webapp/<app>/tasks.py); models load lazily in the child process, never in the prefork parent.
# Roles: `ingest,default` (ingestion, re-embeds), `localize` (the detector), `train` (retraining, one run at a time,
# a fresh child per run):
#   CELERY_PREFETCH=1 workers/start_worker.sh train -n train@%h --max-tasks-per-child 1
# On a GPU machine run that line there, with the shared DATABASE_URL, CELERY_BROKER_URL, MILVUS_URI and a
# TRAINED_MODELS_DIR every embedding worker can read; RETRAIN_CONFIG empty picks configs/visnet_retrain_gpu.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
CELERY=${CELERY:-.venv/bin/celery}
[ -x "$CELERY" ] || CELERY=celery
queues=${1:-${CELERY_QUEUES:-ingest,default}}
shift || true
# Prefetch: the filesystem broker (make run's default) has no event loop, so Celery's fallback loop settles acks and
# takes new messages once per 2 s drain cycle; the worker needs enough messages in hand to stay busy that long. With
# 1 in hand make bench's worker sat idle 78 % of the time (8 images/s: each 32-image task and the similar-list
# update it queues ran in about 0.4 s, then waited for the next cycle). Redis and RabbitMQ take the next message as
# soon as one is acked: 2 is enough there.
case "${CELERY_BROKER_URL:-filesystem://}" in
  filesystem*) default_prefetch=8 ;;
  *) default_prefetch=2 ;;
esac
exec "$CELERY" -A webapp worker -Q "$queues" --concurrency "${CELERY_CONCURRENCY:-1}" \
  --prefetch-multiplier "${CELERY_PREFETCH:-$default_prefetch}" -O fair --loglevel "${CELERY_LOGLEVEL:-INFO}" "$@"
