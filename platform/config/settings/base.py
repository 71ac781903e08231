"""Settings shared by every environment. Values that differ between machines come from the
environment, each with a default that works on one machine with nothing else installed:
SQLite next to the code and the embedded Redis that ``make run`` starts."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path

import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

from config.database import database_config, database_url
from workers.settings import float_setting, int_setting, required_env_check

# Lets annotations like ModelAdmin[Tenant] and QuerySet[Any] run (django-stubs generics).
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parents[3]
DATA_DIR = Path(os.environ.get("DATA_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


# Above these, a setting was taken at start and then broke what used it: a date beyond year
# 9999 (INFERENCE_TIMEOUT_S=1e308: every classification a 500; PAST_DUE_GRACE_DAYS of 10^11
# days: every call of a tenant past due), or a consumer that crashed (an audit). Sizes and
# counts stay far below 10^12; durations, in whatever unit, below 10^7 (115 days in seconds).
INT_MAX = 10**12
FLOAT_MAX = 1e7
TEN_YEARS_S = 10 * 365 * 24 * 3600


def env_int(name: str, default: int, minimum: int, maximum: int = INT_MAX) -> int:
    """An integer setting; ``ImproperlyConfigured`` naming the variable for one that is not
    an integer or is below ``minimum`` (a negative timeout or a zero batch started a stack
    that looked healthy and answered every call 503, or stored no usage) or above
    ``maximum``."""
    try:
        return int_setting(os.environ, name, default, minimum, maximum)
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from None


def env_float(name: str, default: float, minimum: float, maximum: float = FLOAT_MAX) -> float:
    """A finite number setting, as ``env_int`` (NaN passed every comparison: each request
    was a 500)."""
    try:
        return float_setting(os.environ, name, default, minimum, maximum)
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from None


# What the image requires (deploy/Dockerfile): a Secret that lacked one ran the pod on
# make run's defaults, the public development key and any host, or a SQLite file of its own,
# on which every route failed while /readyz passed.
required_env_check(os.environ, ImproperlyConfigured)


SECRET_KEY = os.environ.get("SECRET_KEY", "dev-only-insecure-key-change-me")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = os.environ.get("ALLOWED_HOSTS", "*").split(",")
# Behind a load balancer that ends TLS: the admin's forms are posted from https://host, which
# Django's CSRF check compares with the request it sees (http:// without these two).
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]
if env_bool("TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # Served over TLS: the admin's session and CSRF cookies never travel in the clear.
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
# Strict-Transport-Security on https responses, once every host under the domain is served
# over TLS (a browser then refuses plain http for this long): 0 sends none.
SECURE_HSTS_SECONDS = env_int("HSTS_SECONDS", 0, 0, TEN_YEARS_S)
# When set, GET /metrics answers only a scrape that sends ``Authorization: Bearer <token>``:
# its series name the fleet's hardware price and every route's traffic, which a public
# host should not show to anyone who asks. Unset, /metrics is open (one machine, a cluster
# that reaches the API only through a private port).
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "").strip()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "core",
    "tenants",
    "apikeys",
    "inference",
    "metering",
    "ops",
    "datasets",
    "finetuning",
    "plans",
    "billing",
    "limits",
    "economics",
    # After the project's apps: its admin pages (lockouts, login log) join the dashboard.
    "axes",
]

MIDDLEWARE = [
    "core.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "core.middleware.AdminSessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "core.middleware.AdminAuthenticationMiddleware",
    "core.middleware.AdminMessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "core.middleware.AdminUnavailableMiddleware",
    "core.admin_login.AdminLoginAddressLimitMiddleware",
    # Last, as django-axes asks: turns a locked-out login into its 429 page.
    "axes.middleware.AxesMiddleware",
]

# The admin's login is throttled (django-axes): after ADMIN_LOGIN_FAILURE_LIMIT failed
# logins for one username from one client address, that pair is refused (429) for
# ADMIN_LOGIN_COOLOFF_MINUTES, however good the next password; a success resets the count.
# Keyed by the pair, so that nobody can lock the operator out from another address by
# failing on purpose. Lockouts and every login are listed in the admin (Axes); an operator
# lifts one early with ``manage.py axes_reset_username NAME`` (or ``axes_reset``).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("ADMIN_LOGIN_FAILURE_LIMIT", 5, 1)
# And from one address, whatever the usernames, within the same cool-off (core/admin_login.py):
# the pair's lockout alone left an address free to try five passwords on every username.
ADMIN_LOGIN_ADDRESS_LIMIT = env_int("ADMIN_LOGIN_ADDRESS_LIMIT", 30, 0)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("ADMIN_LOGIN_COOLOFF_MINUTES", 15.0, 0.0))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "core.client_ip.client_ip"
AXES_VERBOSE = False
# The number of proxies in front of the API that append the address they were reached from
# to X-Forwarded-For: a client's address is that many entries from the list's end (0: the
# socket's peer, REMOTE_ADDR). Anything further left is the client's to forge.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0, 0)

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]


DATABASE_URL = database_url(os.environ, DATA_DIR)
DATABASES = {"default": database_config(DATABASE_URL)}
# The longest one SQL statement of an API request may run on PostgreSQL before the server
# cancels it (the request is a 503 to retry); the admin, served by the same processes, too.
# Applied by the API server's entry point only (config.wsgi, core.statement_timeout), never
# to migrations, management commands, the consumers or the platform worker. 0: no limit.
DATABASE_STATEMENT_TIMEOUT_MS = env_int("DATABASE_STATEMENT_TIMEOUT_MS", 30000, 0, 2**31 - 1)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def embedded_redis_url(base_dir: Path = BASE_DIR) -> str:
    """The URL of the embedded Redis that ``make run`` started, which it writes under
    var/redis/ while it runs (deploy/devserver.py): a ``manage.py`` command in another
    terminal has no REDIS_URL and must reach that server, not one on the default port."""
    try:
        return (base_dir / "var" / "redis" / "url").read_text().strip()
    except OSError:
        return ""


REDIS_URL = os.environ.get("REDIS_URL") or embedded_redis_url() or "redis://127.0.0.1:6379/0"
if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    # (REDIS_URL=garbage started the stack: Celery took it for an AMQP broker's name, every
    # classification was a 500, and no line of its 354 named the variable: an audit.)
    raise ImproperlyConfigured(
        f"REDIS_URL must be a redis://, rediss:// or unix:// URL, got {REDIS_URL!r}"
    )
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "cache",
        # NOTE: timeouts, so that a stalled Redis holds a request that touches the cache for
        # seconds, not until it resumes.
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            "SOCKET_CONNECT_TIMEOUT": 2,
            "SOCKET_TIMEOUT": 5,
        },
    }
}

# Celery is used by the control plane only to send tasks; the workers have their own app
# (workers/celery_app.py) with the same broker.
CELERY_BROKER_URL = REDIS_URL

# Inference: how long the API waits for a worker, and how deep the queue may grow before new
# requests are turned away with 503 instead of waiting in a queue they cannot leave in time.
INFERENCE_TIMEOUT_S = env_float("INFERENCE_TIMEOUT_S", 30.0, 0.001)
INFERENCE_MAX_QUEUE_DEPTH = env_int("INFERENCE_MAX_QUEUE_DEPTH", 5000, 1)
# Classifications in flight in one API process at the same moment travel to the workers as
# one message (inference/dispatch.py): the publisher lingers this long for company, and puts
# at most this many requests in a message.
INFERENCE_COALESCE_MS = env_float("INFERENCE_COALESCE_MS", 1.0, 0.0)
# Request bodies one tenant may be receiving at once in an API process (core.body_slots):
# slow bodies held every request thread. 0: no limit.
BODY_READS_PER_TENANT = env_int("BODY_READS_PER_TENANT", 12, 0)
INFERENCE_COALESCE_MAX = env_int("INFERENCE_COALESCE_MAX", 32, 1)
# Result cache: how long an answered input is kept for identical requests (0: off).
# Test-mode keys (sk_test_) run real models but are never billed: their inputs are counted
# apart from live ones, against this allowance per billing period, whatever the plan.
TEST_MODE_MONTHLY_INPUTS = env_int("TEST_MODE_MONTHLY_INPUTS", 10000, -1)
# The currency of the workers' cost to serve (their WORKER_CURRENCY): usage events carry
# cost_micros but not its currency. Margins are taken only against revenue in it.
COST_CURRENCY = os.environ.get("COST_CURRENCY", "usd").strip().lower() or "usd"
RESULT_CACHE_TTL_S = env_int("RESULT_CACHE_TTL_S", 24 * 3600, 0, TEN_YEARS_S)

# Usage consumer: rows per bulk insert and the longest an event waits in its buffer.
USAGE_BATCH_SIZE = env_int("USAGE_BATCH_SIZE", 500, 1)
# NOTE: a flush (a transaction, the plans read, the ledger insert, the rollups' updates)
# costs ~8 ms of CPU however few events it stores: at 0.2 s, 0.77 ms a call under 32
# clients on the model path, 0.28 ms at 1 s (bench_cpu.py). Usage shows up a second later.
USAGE_FLUSH_INTERVAL_S = env_float("USAGE_FLUSH_INTERVAL_S", 1.0, 0.01)

# Idempotency keys are remembered this long (Stripe keeps them 24 hours).
IDEMPOTENCY_TTL_S = env_int("IDEMPOTENCY_TTL_S", 24 * 3600, 1, TEN_YEARS_S)

# 96 inputs of 10,000 characters at their longest in JSON: an emoji written as the \u
# escapes Python's json.dumps writes by default is 12 bytes (11.5 MB in all), plus labels
# and examples sent as UTF-8.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_REQUEST_BYTES", 16 * 1024 * 1024, 1024)

# Fine-tuning. The artifact store (datasets, embeddings, model files) is a directory shared
# with the workers, who read the same ARTIFACT_DIR (see workers/artifacts.py).
ARTIFACT_DIR = Path(os.environ.get("ARTIFACT_DIR", DATA_DIR / "artifacts"))
DATASET_MAX_BYTES = env_int("DATASET_MAX_BYTES", 20 * 1024 * 1024, 1)
# What one tenant's datasets (not deleted) may take in the shared artifact store in all.
DATASET_STORAGE_BYTES = env_int("DATASET_STORAGE_BYTES", 1024 * 1024 * 1024, 1)
# A running job with no heartbeat for this long has lost its worker: retried from the start
# up to FINETUNE_MAX_ATTEMPTS attempts in all, then failed. Checked every sweep interval.
FINETUNE_HEARTBEAT_TIMEOUT_S = env_float("FINETUNE_HEARTBEAT_TIMEOUT_S", 60.0, 1.0)
FINETUNE_MAX_ATTEMPTS = env_int("FINETUNE_MAX_ATTEMPTS", 2, 1)
FINETUNE_SWEEP_INTERVAL_S = env_float("FINETUNE_SWEEP_INTERVAL_S", 5.0, 0.1)
# Fairness on the one training queue: a tenant's jobs on it (sent and not ended) at a time;
# its others wait in the database and are sent, oldest first, as these end
# (finetuning/dispatch.py).
FINETUNE_DISPATCHED_PER_TENANT = env_int("FINETUNE_DISPATCHED_PER_TENANT", 1, 1)
# A job's budget: its trained tokens (epochs x its training examples' tokens, what it is
# billed on) and its time on a worker. Over the tokens: refused at create on an estimate
# (400 token_budget_exceeded), else failed by the worker before it trains; over the time:
# stopped and failed (time_limit_exceeded). Failed jobs are not billed.
FINETUNE_MAX_TRAINED_TOKENS = env_int("FINETUNE_MAX_TRAINED_TOKENS", 10000000, 1)
# (0 was taken, and meant no limit at all: an audit.)
FINETUNE_TIME_LIMIT_S = env_float("FINETUNE_TIME_LIMIT_S", 1800.0, 1.0)
# Test mode is never billed: its own, smaller token budget per job, and at most this many
# test-mode jobs per tenant per UTC day (429 test_mode_fine_tune_limit past it).
FINETUNE_TEST_MODE_MAX_TRAINED_TOKENS = env_int("FINETUNE_TEST_MODE_MAX_TRAINED_TOKENS", 200000, 0)
FINETUNE_TEST_MODE_DAILY_JOBS = env_int("FINETUNE_TEST_MODE_DAILY_JOBS", 5, 0)
# A fine-tuned model's int8 variant is offered (registered as a second model, billed at the
# int8 tier) only if it loses at most this many points of validation accuracy.
FINETUNE_INT8_MAX_LOSS_POINTS = env_float("FINETUNE_INT8_MAX_LOSS_POINTS", 1.0, 0.0)

# Billing. Stripe is the customer record, subscription, invoice and payment; the platform
# rates usage itself. STRIPE_API_BASE points the official client at an emulator (localstripe)
# in tests and demos. Two webhook secrets may be set (comma-separated) while one is rotated.
STRIPE_API_KEY = os.environ.get("STRIPE_API_KEY", "")
STRIPE_API_BASE = os.environ.get("STRIPE_API_BASE", "https://api.stripe.com")
STRIPE_WEBHOOK_SECRETS = [
    s.strip() for s in os.environ.get("STRIPE_WEBHOOK_SECRETS", "").split(",") if s.strip()
]
STRIPE_WEBHOOK_TOLERANCE_S = env_int("STRIPE_WEBHOOK_TOLERANCE_S", 300, 1, TEN_YEARS_S)
# Each try of a Stripe request waits this long for an answer (the library's own default is
# 80 s, three tries in all: a stalled Stripe held a request four minutes), and at most
# STRIPE_CONCURRENCY of a process's threads wait on Stripe at once: another waits a second
# for a place, then answers a 503, rather than queue behind them (thirty held billing reads
# starved classifications, health checks and webhooks of the API's threads).
STRIPE_TIMEOUT_S = env_float("STRIPE_TIMEOUT_S", 10.0, 0.1)
STRIPE_CONCURRENCY = env_int("STRIPE_CONCURRENCY", 4, 1)
# Until a checkout flow collects a card, a paid plan starts on Stripe's test card.
STRIPE_DEFAULT_PAYMENT_METHOD = os.environ.get("STRIPE_DEFAULT_PAYMENT_METHOD", "pm_card_visa")
# How long a past_due subscription keeps making billable calls before they answer 402.
PAST_DUE_GRACE_DAYS = env_int("PAST_DUE_GRACE_DAYS", 7, 0, 3650)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["apikeys.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["apikeys.permissions.HasScope"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["core.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "core.errors.exception_handler",
    "DEFAULT_METADATA_CLASS": "core.metadata.AllowOnly",
    "DEFAULT_SCHEMA_CLASS": "core.schema.AutoSchema",
    "UNAUTHENTICATED_USER": None,
    "DATETIME_FORMAT": "iso-8601",
    # ?format= is an unknown parameter like any other (DRF would pick a renderer by it, and
    # answer 404 for one it lacks).
    "URL_FORMAT_OVERRIDE": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Margin API",
    "DESCRIPTION": (
        "Text classification as an API: zero-shot and few-shot classification on shared "
        "encoders, API keys, usage metering. Authenticate with `Authorization: Bearer sk_...`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": r"/v1",
    "ENUM_NAME_OVERRIDES": {},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.schema.operations_paths",
        "core.operation_docs.operation_docs",
    ],
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LOG_LEVEL = os.environ.get("LOG_LEVEL", "").strip().upper() or "INFO"
if not isinstance(logging.getLevelName(LOG_LEVEL), int):
    raise ImproperlyConfigured(
        f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {LOG_LEVEL!r}"
    )

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.request": {"level": "ERROR"},
        # The Stripe library logs every request at INFO; its errors reach us as exceptions.
        "stripe": {"level": "WARNING"},
    },
}
