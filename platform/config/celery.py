"""The control plane's Celery app: it sends tasks to the workers (the workers have their own
app in workers/celery_app.py), and answers come back on per-request Redis lists
(workers/contract.py), not through a Celery result backend.

It also runs the platform's own tasks (billing: webhook events, usage pushes,
reconciliation) in a Django-aware platform worker on the ``platform`` queue:
``manage.py platform_worker``, i.e. ``celery -A config.celery worker -Q platform -B`` with
platform/ and the repository root on the path (the ``-B`` beat runs the schedule below).
"""

from __future__ import annotations

from celery import Celery
from celery.schedules import crontab
from django.conf import settings

from workers.liveness_step import LivenessBeat

app = Celery("platform")
app.conf.update(
    broker_url=settings.CELERY_BROKER_URL,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    # A dead broker must fail a request in seconds (503), not hang it.
    broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 5},
)

# The platform worker's heartbeat (``LIVENESS_FILE``, workers/liveness.py), from its consumer's
# event loop: its tasks run on their own threads, so a long reconciliation does not delay it,
# while a loop wedged on a dead connection stops it. (The API processes only send: no
# consumer runs there, nor does this step.)
app.steps["consumer"].add(LivenessBeat)

# The platform worker's queue (inference tasks name their own queue when sent).
PLATFORM_QUEUE = "platform"
app.conf.task_routes = {
    "billing.*": {"queue": PLATFORM_QUEUE},
    "limits.*": {"queue": PLATFORM_QUEUE},
    "core.*": {"queue": PLATFORM_QUEUE},
    "datasets.*": {"queue": PLATFORM_QUEUE},
    "inference.*": {"queue": PLATFORM_QUEUE},
    "metering.*": {"queue": PLATFORM_QUEUE},
    "finetuning.*": {"queue": PLATFORM_QUEUE},
}
app.autodiscover_tasks(
    lambda: ["billing", "limits", "core", "datasets", "inference", "metering", "finetuning"]
)
app.conf.beat_schedule = {
    # Usage charges go to Stripe through the period; the last ones when it closes (the
    # subscription webhook of the renewal enqueues that push).
    "billing-usage-push": {"task": "billing.usage_push_all", "schedule": crontab(minute=5)},
    "billing-reconcile": {
        "task": "billing.reconcile_all",
        "schedule": crontab(minute=35, hour=3),
    },
    # Webhook events stored but never processed (a lost enqueue).
    "billing-stripe-events-sweep": {"task": "billing.stripe_events_sweep", "schedule": 300.0},
    # Quota counters that lag the ledger (a lost settle, a flushed Redis) are raised.
    "limits-quota-reconcile": {"task": "limits.quota_reconcile_all", "schedule": 600.0},
    # Reservations of calls that never settled (an API process killed mid-call) released.
    "limits-quota-holds-release": {"task": "limits.quota_holds_release", "schedule": 300.0},
    # The ledger's month tables, created months ahead (PostgreSQL: metering.partitions).
    "metering-ledger-partitions": {
        "task": "metering.ledger_partitions_ensure",
        "schedule": crontab(minute=15, hour=2),
    },
    # Idempotency records past any replay (they hold response bodies).
    "core-idempotency-purge": {"task": "core.idempotency_purge", "schedule": 3600.0},
    # Deleted datasets' files that their delete had to leave (a job on them, or stored
    # again within the grace period).
    "datasets-files-sweep": {"task": "datasets.files_sweep", "schedule": 900.0},
    # And deleted models' files (stored again within the grace period at the delete).
    "inference-model-files-sweep": {"task": "inference.model_files_sweep", "schedule": 900.0},
    # Fine-tunes waiting for a slot of their tenant's whose dispatch was lost (the job-events
    # consumer's sweep does the same every few seconds).
    "finetuning-dispatch-sweep": {"task": "finetuning.dispatch_sweep", "schedule": 60.0},
}
