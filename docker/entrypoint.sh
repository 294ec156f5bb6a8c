#!/bin/sh
# Container entrypoint: the first argument picks the role, any further arguments are passed on.
#   web         migrate, then gunicorn on :8000
#   worker      Celery worker for the queues in CELERY_QUEUES (ingest, localize, train, default; compose runs one
#               service per queue); extra arguments go to celery (e.g. `-n ingest@%h --pool solo`)
#   beat        Celery beat scheduler (run exactly one)
#   manage      python manage.py ...   (e.g. `manage createsuperuser`)
# Anything else is executed as a command (e.g. `sh`, `python -c ...`).
set -eu

role="${1:-web}"
if [ "$#" -gt 0 ]; then
    shift
fi

case "$role" in
    web)
        # Set DJANGO_MIGRATE=0 on extra web replicas so only one runs the set-up: migrations, the periodic jobs'
        # schedule (celery beat reads it from the database) and the serving model version, as `make run` does.
        if [ "${DJANGO_MIGRATE:-1}" = "1" ]; then
            python manage.py migrate --noinput
            python manage.py seed_periodic_tasks
            python manage.py ensure_default_model
        fi
        # Limits, workers and the bind are in docker/gunicorn.conf.py. Inside the container gunicorn listens on
        # every interface of the container's own network; Compose publishes the port on the host's 127.0.0.1 only.
        export GUNICORN_BIND="${GUNICORN_BIND:-0.0.0.0:8000}" WEB_CONCURRENCY="${WEB_CONCURRENCY:-4}"
        exec gunicorn webapp.wsgi:application -c /app/docker/gunicorn.conf.py "$@"
        ;;
    worker)
        # Prefork pool by default: the parent never embeds an image, so it never initialises CUDA; models load
        # lazily in the child that runs the first task. A worker that embeds on the GPU passes `--pool solo`, so the
        # one process that consumes tasks is the one that initialises CUDA (a forked child of a CUDA-initialised
        # parent cannot use the GPU).
        exec celery -A webapp worker \
            -Q "${CELERY_QUEUES:-ingest,default}" \
            --concurrency "${CELERY_CONCURRENCY:-2}" \
            --prefetch-multiplier "${CELERY_PREFETCH:-1}" \
            -O fair \
            --loglevel "${CELERY_LOGLEVEL:-INFO}" \
            "$@"
        ;;
    beat)
        # The schedule state file goes to a writable path; /app belongs to root.
        exec celery -A webapp beat \
            --schedule "${CELERY_BEAT_SCHEDULE:-${VAR_DIR:-/tmp}/celerybeat-schedule}" \
            --loglevel "${CELERY_LOGLEVEL:-INFO}" \
            "$@"
        ;;
    manage)
        exec python manage.py "$@"
        ;;
    *)
        exec "$role" "$@"
        ;;
esac
