"""Data plane: Celery workers that run the models. Never imports Django."""
