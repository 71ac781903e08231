"""The control plane's Celery app: it sends tasks to the workers and reads their results.
It never runs tasks itself; the workers have their own app in workers/celery_app.py."""

from __future__ import annotations

from celery import Celery
from django.conf import settings

app = Celery("platform")
app.conf.update(
    broker_url=settings.CELERY_BROKER_URL,
    result_backend=settings.CELERY_RESULT_BACKEND,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    # A dead broker must fail a request in seconds (503), not hang it.
    broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 5},
    redis_socket_timeout=None,
    redis_socket_connect_timeout=5,
    result_expires=600,
)
