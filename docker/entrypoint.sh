#!/bin/sh
# Container entrypoint: the first argument picks the role, any further arguments are passed on.
#   web         migrate, then gunicorn on :8000
#   worker      Celery worker for the CPU queues (prefork pool)
#   gpu-worker  Celery worker for the gpu queue (solo pool: CUDA lives in the one process)
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
        # Set DJANGO_MIGRATE=0 on extra web replicas so only one runs migrations.
        if [ "${DJANGO_MIGRATE:-1}" = "1" ]; then
            python manage.py migrate --noinput
        fi
        # Limits, workers and the bind are in docker/gunicorn.conf.py. Inside the container gunicorn listens on
        # every interface of the container's own network; Compose publishes the port on the host's 127.0.0.1 only.
        export GUNICORN_BIND="${GUNICORN_BIND:-0.0.0.0:8000}" WEB_CONCURRENCY="${WEB_CONCURRENCY:-4}"
        exec gunicorn webapp.wsgi:application -c /app/docker/gunicorn.conf.py "$@"
        ;;
    worker)
        # Prefork pool: the parent never embeds an image, so it never initialises CUDA; models load
        # lazily in the child that runs the first task.
        exec celery -A webapp worker \
            -n "worker@%h" \
            -Q "${CELERY_QUEUES:-ingest,default}" \
            --concurrency "${CELERY_CONCURRENCY:-2}" \
            --prefetch-multiplier 1 \
            -O fair \
            --loglevel "${CELERY_LOGLEVEL:-INFO}" \
            "$@"
        ;;
    gpu-worker)
        # Solo pool: tasks run in this process, so CUDA is initialised exactly once, in the process
        # that uses it (a forked child of a CUDA-initialised parent cannot use the GPU).
        exec celery -A webapp worker \
            -n "gpu@%h" \
            -Q "${CELERY_GPU_QUEUES:-gpu}" \
            --pool solo \
            --prefetch-multiplier 1 \
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
