"""Fast settings for the test suite: same services (the point of most tests), cheaper
password hashing, short timeouts so a broken worker fails a test quickly."""

from .base import *  # noqa: F403
from .base import MIDDLEWARE, STORAGES

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
INFERENCE_TIMEOUT_S = 20.0
USAGE_FLUSH_INTERVAL_S = 0.05
STORAGES = {
    **STORAGES,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Static files are not what the tests are about; whitenoise would warn about an empty root.
MIDDLEWARE = [m for m in MIDDLEWARE if not m.startswith("whitenoise")]
