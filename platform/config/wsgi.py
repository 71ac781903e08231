import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
django_application = get_wsgi_application()

from core.wsgi import ReadableBody  # noqa: E402 - needs the settings configured above

application = ReadableBody(django_application)
