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
# Prefetch 2: with the filesystem broker's 2 s drain cycle, prefetch 1 left the worker idle about half
# the time between 32-image tasks (make bench: 15 -> 34 images/s).
exec "$CELERY" -A webapp worker -Q "$queues" --concurrency "${CELERY_CONCURRENCY:-1}" \
  --prefetch-multiplier "${CELERY_PREFETCH:-2}" -O fair --loglevel "${CELERY_LOGLEVEL:-INFO}" "$@"
