"""Fast settings for the test suite: same services (the point of most tests), cheaper
password hashing, short timeouts so a broken worker fails a test quickly."""

import os
import tempfile
from pathlib import Path

from .base import *  # noqa: F403
from .base import DATABASES, MIDDLEWARE, STORAGES

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
INFERENCE_TIMEOUT_S = 20.0
USAGE_FLUSH_INTERVAL_S = 0.05
STORAGES = {
    **STORAGES,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Static files are not what the tests are about; whitenoise would warn about an empty root.
MIDDLEWARE = [m for m in MIDDLEWARE if not m.startswith("whitenoise")]

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A test database in a file, as the product runs (WAL, busy timeout), not in memory:
    # Django's in-memory test database uses SQLite's shared cache, where a thread that reads
    # a table another thread is writing fails at once ("database table is locked") instead
    # of reading beside it, which failed concurrent requests of the live server at random.
    DATABASES["default"]["TEST"] = {
        "NAME": str(Path(tempfile.gettempdir()) / f"margin-test-{os.getpid()}.sqlite3")
    }
