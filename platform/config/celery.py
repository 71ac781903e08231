"""The control plane's Celery app: it sends tasks to the workers. It never runs tasks
itself (the workers have their own app in workers/celery_app.py), and answers come back on
per-request Redis lists (workers/contract.py), not through a Celery result backend."""

from __future__ import annotations

from celery import Celery
from django.conf import settings

app = Celery("platform")
app.conf.update(
    broker_url=settings.CELERY_BROKER_URL,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    # A dead broker must fail a request in seconds (503), not hang it.
    broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 5},
)
