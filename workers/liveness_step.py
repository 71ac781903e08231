"""The Celery side of the liveness heartbeat (``workers/liveness.py``): a consumer bootstep
that beats from the loop that takes messages off the queue. Both Celery apps add it: the
data plane's workers (``workers.celery_app``) and the platform worker (``config.celery``,
billing's tasks and the beat schedule). Apart from ``workers.liveness`` so that the probe,
which runs that module alone in a fresh interpreter, never imports Celery."""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from workers import liveness


class LivenessBeat(bootsteps.StartStopStep):
    """Touches ``LIVENESS_FILE`` (``workers/liveness.py``) from a timer of the consumer's
    event loop, the loop that takes messages off the queue: it beats while the worker is
    idle, and stops when that loop is stuck. (Started again with the consumer after a lost
    broker connection; a training job on the solo pool holds the loop, and beats from its
    steps instead: ``workers.training.tasks``.)"""

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.enabled = liveness.process().path is not None
        self._entry: Any = None

    def start(self, c: Any) -> None:
        liveness.beat()
        # The file limits itself to a beat an interval: tick twice as often, so that a late
        # tick never leaves it a whole interval older.
        self._entry = c.timer.call_repeatedly(liveness.process().interval_s / 2, liveness.beat)

    def stop(self, c: Any) -> None:
        if self._entry is not None:
            c.timer.cancel(self._entry)
            self._entry = None

    shutdown = stop
