#!/usr/bin/env bash
# Starts the embedded stack: a Milvus server (unless MILVUS_URI is set), a Celery worker process,
# the demo catalog (only what is missing), and gunicorn. Ctrl-C stops everything it started.
# The Milvus server is the engine MILVUS_ENGINE names: `lite` (default: a Milvus Lite server) or `standalone` (a real
# Milvus 2.3 standalone server, scripts/milvus_standalone.py; extra flags for it in MILVUS_STANDALONE_ARGS).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
VAR_DIR=${VAR_DIR:-var}
mkdir -p "$VAR_DIR/log"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

export MILVUS_ENGINE=${MILVUS_ENGINE:-lite}
store_dir=$VAR_DIR/milvus
[ "$MILVUS_ENGINE" = standalone ] && store_dir=$VAR_DIR/milvus-standalone
new_store=0
[ -n "${MILVUS_URI:-}" ] || [ -d "$store_dir" ] || new_store=1
if [ -z "${MILVUS_URI:-}" ] && [ "$MILVUS_ENGINE" = standalone ]; then
  MILVUS_PORT=${MILVUS_PORT:-19530}
  export MILVUS_URI="http://127.0.0.1:$MILVUS_PORT"
  # shellcheck disable=SC2086 # MILVUS_STANDALONE_ARGS is a list of flags
  $PY scripts/milvus_standalone.py --data-dir "$store_dir" --port "$MILVUS_PORT" \
    ${MILVUS_STANDALONE_ARGS:-} >"$VAR_DIR/log/milvus.log" 2>&1 &
  pids+=($!)
  # It prints `ready` once the server answers a call (about 3 s; 10 s on a restart, 8 s the first time it unpacks).
  for _ in $(seq 600); do
    grep -q '^ready ' "$VAR_DIR/log/milvus.log" && break
    kill -0 "${pids[-1]}" 2>/dev/null || { tail -20 "$VAR_DIR/log/milvus.log"; exit 1; }
    sleep 0.2
  done
  grep -q '^ready ' "$VAR_DIR/log/milvus.log" || { tail -20 "$VAR_DIR/log/milvus.log"; exit 1; }
  echo "vector store: Milvus standalone server on $MILVUS_URI (data in $store_dir)"
elif [ -z "${MILVUS_URI:-}" ]; then
  MILVUS_PORT=${MILVUS_PORT:-19530}
  export MILVUS_URI="http://127.0.0.1:$MILVUS_PORT"
  .venv/bin/milvus-lite server --data-dir "$VAR_DIR/milvus" --host 127.0.0.1 --port "$MILVUS_PORT" \
    >"$VAR_DIR/log/milvus.log" 2>&1 &
  pids+=($!)
  $PY -m webapp.ports 127.0.0.1 "$MILVUS_PORT" 60 || { tail -20 "$VAR_DIR/log/milvus.log"; exit 1; }
  echo "vector store: Milvus Lite server on $MILVUS_URI (data in $VAR_DIR/milvus)"
fi

# One torch thread: the forward pass is a small share of an image's cost, and with the other core busy (the web, an
# import, the databases) a second thread spins: 32-image batches measured under load took 12-14 ms of CPU per image
# with one thread and 19-35 ms with two.
TORCH_NUM_THREADS=${INGEST_TORCH_THREADS:-1} workers/start_worker.sh ingest,default >"$VAR_DIR/log/worker.log" 2>&1 &
pids+=($!)
# Localization has its own worker so a shopper's photo never waits behind a catalog import. The solo pool runs
# the detector in the consuming process: a prefork child acks through the parent's 2 s loop, which held each
# photo about 2 s on the filesystem broker (solo: about 50 ms); one torch thread keeps it from fighting the web.
TORCH_NUM_THREADS=${LOCALIZE_TORCH_THREADS:-1} CELERY_PREFETCH=1 workers/start_worker.sh localize -P solo \
  -n "localize@%h" >"$VAR_DIR/log/localize.log" 2>&1 &
pids+=($!)
# Retraining has its own worker: one run at a time, a fresh child per run (its memory goes back, CUDA only ever in
# the child), at a lower CPU priority so searches stay fast while it trains. On a GPU machine start it there (README).
nice -n 10 env CELERY_PREFETCH=1 workers/start_worker.sh train -n "train@%h" --max-tasks-per-child 1 \
  >"$VAR_DIR/log/train.log" 2>&1 &
pids+=($!)
echo "workers: Celery ingest,default, localize and train (broker ${CELERY_BROKER_URL:-filesystem://}), logs in $VAR_DIR/log/"

$PY manage.py ensure_admin
# Periodic jobs (triplet mining, near-duplicates, the nightly retrain): seeded once, then celery beat sends them.
$PY manage.py seed_periodic_tasks
.venv/bin/celery -A webapp beat --loglevel INFO >"$VAR_DIR/log/beat.log" 2>&1 &
pids+=($!)
# The serving model is registered here, by the setup, never by a read: with none active, what the alias
# already serves (or the ImageNet stand-in) becomes the active version.
$PY manage.py ensure_default_model
# A new vector store beside an existing catalog (the engine was switched, or its data removed): queue the catalog's
# ingestion into it now (celery beat's periodic reconcile would within RECONCILE_EVERY_MINUTES).
if [ "$new_store" = 1 ]; then
  $PY manage.py reconcile_vectors --repair || echo "warning: reconcile_vectors failed" >&2
fi
$PY manage.py load_demo_catalog --requeue-pending
# Candidate triplets for the review queue (/curation/review/): BISS-mined for the demo catalog, with street photos
# of the small street-to-shop benchmark (built once, about 10 s); a re-run adds only what is new.
$PY manage.py mine_triplets --build-benchmark || echo "warning: mining candidate triplets failed" >&2
# Serve the trained default model: register it and, unless it is already active (or being embedded),
# queue its activation; the worker re-embeds the catalog in the background and then swaps the alias.
if [ -f models/visnet-default/config.json ]; then
  $PY manage.py register_model models/visnet-default --activate --if-not-active \
    || echo "warning: models/visnet-default could not be registered; serving the ImageNet stand-in" >&2
fi

echo
echo "  Open http://$HOST:$PORT/   (admin: http://$HOST:$PORT/admin/, API docs: http://$HOST:$PORT/api/docs/)"
echo
.venv/bin/gunicorn webapp.wsgi:application -c docker/gunicorn.conf.py --bind "$HOST:$PORT" --workers "${WEB_CONCURRENCY:-2}" \
  --threads "${WEB_THREADS:-4}" --timeout 120 --access-logfile "$VAR_DIR/log/access.log" &
pids+=($!)
wait "${pids[-1]}"
