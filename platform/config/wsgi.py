import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from core.statement_timeout import statement_timeout_set

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
# NOTE: the API server's processes alone run with a limit on each SQL statement (this module
# is their entry point; management commands, consumers and workers never load it). Set
# before Django opens a connection: it applies as each one opens (core.statement_timeout).
statement_timeout_set(settings.DATABASES, settings.DATABASE_STATEMENT_TIMEOUT_MS)
django_application = get_wsgi_application()

from core.wsgi import ReadableBody  # noqa: E402 - needs the settings configured above

application = ReadableBody(django_application)
