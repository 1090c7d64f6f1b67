#!/bin/sh
# Starts one of the site's processes in a container: `migrate`, `web`, `worker` or `beat` (compose.yml picks);
# anything else runs as given (`manage.py createsuperuser`, `hf download ...`, a shell).
set -eu

# env.example ships placeholders so `docker compose config` works out of the box; never serve with them.
refuse_placeholders() {
    for name in SECRET_KEY DATABASE_URL; do
        value=$(printenv "$name" || true)
        case "$value" in
            *change-me*)
                echo "deepseek-web: $name still holds the placeholder from env.example; set it in docker/.env" >&2
                exit 64 ;;
        esac
    done
}

case "${1:-web}" in
    migrate)
        # One-shot, before everything else starts (compose: service_completed_successfully), so two web
        # replicas never race on migrations and workers never write to tables that are not there yet.
        # (Static files are collected when the web image is built.)
        refuse_placeholders
        exec python manage.py migrate --noinput
        ;;
    web)
        refuse_placeholders
        # daphne with the server's own body cap (SERVER_MAX_BODY_BYTES: deepseek_web/daphne_server.py).
        exec python -m deepseek_web.daphne_server -b 0.0.0.0 -p "${PORT:-8000}" deepseek_web.asgi:application
        ;;
    worker)
        refuse_placeholders
        : "${WORKER_MODEL:?set WORKER_MODEL to a model name from DEEPSEEK_MODELS}"
        # Ask the app for the model's queue: it honours an entry's own `queue`, and a name missing from
        # DEEPSEEK_MODELS fails here in one line instead of leaving a worker that never gets a task.
        queue=$(python -c '
import sys, django
django.setup()
from chat.core.served_models import all_models
spec = all_models().get(sys.argv[1])
if spec is None:
    sys.exit(f"WORKER_MODEL={sys.argv[1]!r} is not a name in DEEPSEEK_MODELS")
print(spec.celery_queue)' "$WORKER_MODEL")
        # WORKER_EXTRA_QUEUES: `default` on one worker runs the periodic jobs that beat schedules.
        # Concurrency comes from the app's settings (WORKER_CONCURRENCY, else sized from the engine).
        exec celery -A deepseek_web worker -P threads \
            -Q "$queue${WORKER_EXTRA_QUEUES:+,$WORKER_EXTRA_QUEUES}" -n "$WORKER_MODEL@%h" --loglevel "${LOG_LEVEL:-INFO}"
        ;;
    beat)
        exec celery -A deepseek_web beat -s "${DATA_DIR:-/data}/celerybeat-schedule" --loglevel "${LOG_LEVEL:-INFO}"
        ;;
    *)
        exec "$@"
        ;;
esac
