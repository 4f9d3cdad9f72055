"""Control-plane settings, all from the environment (see docs/configuration.md)."""

from __future__ import annotations

import re
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config import env

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env.string("EDGEFLEET_DATA_DIR", str(BASE_DIR / "var")) or "")

ENVIRONMENT = env.choice("EDGEFLEET_ENV", "development", ("development", "production"))
PRODUCTION = ENVIRONMENT == "production"
DEBUG = env.boolean("DEBUG", default=not PRODUCTION)
if PRODUCTION and DEBUG:
    # Debug pages show settings, SQL and tracebacks to whoever triggers an error.
    raise ImproperlyConfigured("DEBUG must be off when EDGEFLEET_ENV=production.")

# Production has no default secret: a forgotten key must stop the start, not
# sign sessions with a value published in this repository.
SECRET_KEY = env.secret("SECRET_KEY")
if SECRET_KEY is None:
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) must be set when EDGEFLEET_ENV=production.")
    SECRET_KEY = "development-only-insecure-key"  # noqa: S105

ALLOWED_HOSTS = env.string_list("ALLOWED_HOSTS", [] if PRODUCTION else ["*"])
CSRF_TRUSTED_ORIGINS = env.string_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "core",
    "registry",
    "fleet",
    "telemetry",
    "rollouts",
    "escalations",
    "bridge",
    "demo",
    "dashboard",
]

MIDDLEWARE = [
    "core.metrics.RequestMetricsMiddleware",
    "core.health.ProbeMiddleware",
    "core.middleware.ApiErrorMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "dashboard.context.role",
            ],
        },
    },
]

_default_db = f"sqlite:///{DATA_DIR / 'edgefleet.sqlite3'}"
_database_url = env.url("DATABASE_URL", _default_db, ("sqlite", "postgres", "postgresql"), from_file=True)
DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=60)}
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # No JIT: the planner misestimates array-driven statements (unnest) by
    # millions of rows, and compiling them cost ~100 ms per ingest batch for a
    # sub-millisecond execution. JIT pays off for long analytical queries only.
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    _options["options"] = f"{_options.get('options', '')} -c jit=off".strip()
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Several processes (web, bridge, worker) share the file in the demo: WAL
    # lets readers run beside the writer, and the timeout waits out a writer
    # instead of failing with "database is locked".
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Where collectstatic gathers the files the TLS proxy serves (the image builds them into /app/staticfiles).
STATIC_ROOT = Path(env.string("STATIC_ROOT", str(DATA_DIR / "static")) or "")
# The dashboard's own CSS/JS, and Chart.js and htmx as `npm ci` installed them (package-lock.json
# pins them): nothing is copied into the repository or fetched from a CDN, since sites are air-gapped.
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("vendor/chart.js", BASE_DIR / "node_modules" / "chart.js" / "dist"),
    ("vendor/htmx", BASE_DIR / "node_modules" / "htmx.org" / "dist"),
]
MEDIA_ROOT = Path(env.string("MEDIA_ROOT", str(DATA_DIR / "media")) or "")
MEDIA_URL = "media/"

# The dashboard's own login page: the admin's form admits staff only, and viewers are not staff.
LOGIN_URL = "/login/"

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env.boolean("BEHIND_TLS_PROXY", PRODUCTION) else None
SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "core.api.authentication.ApiTokenAuthentication",
        "fleet.api.authentication.DeviceAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "core.filters.OrderingFilter",
    ],
    # Every error is {code, detail, fields?}: docs/api.md.
    "EXCEPTION_HANDLER": "core.api.exceptions.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_SCHEMA_CLASS": "core.api.schema.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {"enroll": env.string("ENROLL_THROTTLE_RATE", "60/minute")},
}

SPECTACULAR_SETTINGS = {
    "TITLE": "edgefleet control plane API",
    "DESCRIPTION": "REST API v1: enrollment, sites, devices and the registry CI publishes to.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI assets come from the installed sidecar package, never a CDN:
    # control planes often run on air-gapped networks.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# MQTT: the bridge's own connection, and what devices are told at enrollment.
MQTT_URL = env.url("MQTT_URL", "mqtt://127.0.0.1:1883", ("mqtt", "mqtts"))
MQTT_USERNAME = env.string("MQTT_USERNAME")
MQTT_PASSWORD = env.secret("MQTT_PASSWORD")
DEVICE_MQTT_URL = env.url("DEVICE_MQTT_URL", MQTT_URL, ("mqtt", "mqtts"))
MQTT_SHARED_GROUP = env.string("MQTT_SHARED_GROUP", "edgefleet-bridge")
MQTT_MAX_PAYLOAD = env.integer("MQTT_MAX_PAYLOAD", 256 * 1024, minimum=1024)
MQTT_KEEPALIVE = env.integer("MQTT_KEEPALIVE", 30, minimum=5, maximum=3600)

# How the broker learns about device credentials: Mosquitto's dynamic-security
# plugin (production), the embedded broker's database check (demo), or nothing.
BROKER_PROVISIONER = env.choice("BROKER_PROVISIONER", "embedded", ("dynsec", "embedded", "none"))
BROKER_ADMIN_USERNAME = env.string("BROKER_ADMIN_USERNAME", "edgefleet-admin")
BROKER_ADMIN_PASSWORD = env.secret("BROKER_ADMIN_PASSWORD")
# How long a dynamic-security command may take before enrollment gives up (503).
BROKER_ADMIN_TIMEOUT_S = env.integer("BROKER_ADMIN_TIMEOUT_S", 10, minimum=1, maximum=120)
# How often the embedded broker re-checks that connected devices are still enrolled.
EMBEDDED_BROKER_RECHECK_S = env.integer("EMBEDDED_BROKER_RECHECK_S", 5, minimum=1, maximum=3600)

# Registry: signing keys live in files here (0600), never in the database.
REGISTRY_KEY_DIR = Path(env.string("REGISTRY_KEY_DIR", str(DATA_DIR / "keys")) or "")
# Create the first signing key on first use; production makes keys explicitly.
REGISTRY_AUTO_SIGNING_KEY = env.boolean("REGISTRY_AUTO_SIGNING_KEY", not PRODUCTION)
REGISTRY_MAX_UPLOAD_BYTES = env.integer("REGISTRY_MAX_UPLOAD_BYTES", 256 * 1024 * 1024, minimum=1024)
REGISTRY_BUNDLE_TTL_DAYS = env.integer("REGISTRY_BUNDLE_TTL_DAYS", 365, minimum=1, maximum=3650)
REGISTRY_MIN_AGENT_VERSION = env.string("REGISTRY_MIN_AGENT_VERSION", "0.1.0") or "0.1.0"

ENROLLMENT_TOKEN_TTL_HOURS = env.integer("ENROLLMENT_TOKEN_TTL_HOURS", 24, minimum=1, maximum=24 * 30)
# How often the dashboard's live parts (overview counts, site devices, device state, rollout progress) refresh.
DASHBOARD_POLL_S = env.integer("DASHBOARD_POLL_S", 5, minimum=1, maximum=300)
# A signed desired document is valid this long; the control plane re-issues each one when less
# than DESIRED_RENEW_HOURS of it is left, so a device holding an expired one is being frozen.
DESIRED_TTL_HOURS = env.integer("DESIRED_TTL_HOURS", 24, minimum=1, maximum=24 * 365)
DESIRED_RENEW_HOURS = env.integer("DESIRED_RENEW_HOURS", 12, minimum=1, maximum=24 * 365)
if DESIRED_RENEW_HOURS >= DESIRED_TTL_HOURS:
    raise ImproperlyConfigured("DESIRED_RENEW_HOURS must be less than DESIRED_TTL_HOURS")
DEVICE_OFFLINE_AFTER_S = env.integer("DEVICE_OFFLINE_AFTER_S", 180, minimum=10)
HEARTBEAT_INTERVAL_S = env.integer("HEARTBEAT_INTERVAL_S", 30, minimum=1, maximum=3600)

# Celery: a local filesystem transport needs no server for one machine; set
# CELERY_BROKER_URL to redis:// or amqp:// to run workers on many hosts.
CELERY_BROKER_URL = env.url(
    "CELERY_BROKER_URL",
    "filesystem://",
    ("filesystem", "redis", "rediss", "amqp", "amqps", "memory"),
    from_file=True,
)
if CELERY_BROKER_URL == "filesystem://":
    _queue_dir = DATA_DIR / "celery" / "queue"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(DATA_DIR / "celery" / "processed"),
        # Broadcast (remote control) tables; kombu's default is ./control in the working directory.
        "control_folder": str(DATA_DIR / "celery" / "control"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env.boolean("CELERY_TASK_ALWAYS_EAGER", False)
# The cloud model's work on its own queue, so it can run on separate (GPU) hosts: `celery worker -Q cloud`.
CELERY_TASK_ROUTES = {"escalations.tasks.answer_escalations": {"queue": "cloud"}}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celery" / "beat-schedule")
# How often the beat runs the telemetry rollups and the rollout scheduler's tick; the demo shortens both.
TELEMETRY_ROLLUP_INTERVAL_S = env.integer("TELEMETRY_ROLLUP_INTERVAL_S", 60, minimum=5, maximum=3600)
ROLLOUT_TICK_INTERVAL_S = env.integer("ROLLOUT_TICK_INTERVAL_S", 15, minimum=1, maximum=3600)
CELERY_BEAT_SCHEDULE = {
    "mark-silent-devices-offline": {"task": "fleet.tasks.mark_silent_devices_offline", "schedule": 30.0},
    "reconcile-broker-credentials": {"task": "fleet.tasks.reconcile_broker", "schedule": 300.0},
    "reissue-desired-documents": {"task": "fleet.tasks.reissue_desired", "schedule": 900.0},
    "telemetry-rollups": {"task": "telemetry.tasks.roll_up", "schedule": float(TELEMETRY_ROLLUP_INTERVAL_S)},
    "telemetry-alerts": {"task": "telemetry.tasks.evaluate_alerts", "schedule": 60.0},
    "telemetry-retention": {"task": "telemetry.tasks.apply_retention", "schedule": 3600.0},
    "rollouts-tick": {"task": "rollouts.tasks.tick", "schedule": float(ROLLOUT_TICK_INTERVAL_S)},
    "escalations-retention": {"task": "escalations.tasks.apply_retention", "schedule": 3600.0},
    "escalations-answer": {"task": "escalations.tasks.answer_escalations", "schedule": 10.0},
}

# Cloud escalation (docs/escalation.md): the model that answers escalated frames, and how a worker runs it.
CLOUD_MODEL = env.string("CLOUD_MODEL", "cloud-classifier") or "cloud-classifier"
CLOUD_EXECUTION_PROVIDERS = env.string_list("CLOUD_EXECUTION_PROVIDERS", ["CPUExecutionProvider"])
CLOUD_INTRA_OP_THREADS = env.integer("CLOUD_INTRA_OP_THREADS", 0, minimum=0, maximum=256)
# Triton's dynamic batcher: at most this many frames a batch, waiting at most this long for it to fill.
CLOUD_MAX_BATCH = env.integer("CLOUD_MAX_BATCH", 16, minimum=1, maximum=1024)
CLOUD_MAX_QUEUE_DELAY_MS = env.integer("CLOUD_MAX_QUEUE_DELAY_MS", 50, minimum=0, maximum=60_000)
# A cloud answer below this confidence (percent) waits for a person even when it agrees with the edge.
CLOUD_REVIEW_BELOW_PCT = env.integer("CLOUD_REVIEW_BELOW_PCT", 60, minimum=0, maximum=100)

# Rollouts (docs/rollouts.md): hardware profiles sent the cpu-int8 bundle of a
# version when it has one (cpu-fp32 otherwise).
# The most devices one tick sends a stage (signs and stores their desired documents, in one transaction);
# a larger stage goes out over the following ticks, so no tick holds a rollout's lock for long.
ROLLOUT_SEND_CHUNK = env.integer("ROLLOUT_SEND_CHUNK", 1000, minimum=1, maximum=100_000)
ROLLOUT_INT8_HARDWARE_PROFILES = env.string_list("ROLLOUT_INT8_HARDWARE_PROFILES", ["rpi4", "rpi5"])

# Escalations (docs/escalation.md): the most one upload may be (multipart body, frame and metadata together),
# the largest frame side in pixels (checked from the header before decoding), and how many expired frames
# one retention transaction removes.
ESCALATION_MAX_BYTES = env.integer("ESCALATION_MAX_BYTES", 2 * 1024 * 1024, minimum=64 * 1024, maximum=64 * 1024 * 1024)
ESCALATION_MAX_IMAGE_SIDE = env.integer("ESCALATION_MAX_IMAGE_SIDE", 4096, minimum=64, maximum=16384)
ESCALATION_RETENTION_CHUNK = env.integer("ESCALATION_RETENTION_CHUNK", 500, minimum=1, maximum=100_000)

# Telemetry (docs/telemetry.md): raw records are kept briefly, rollups longer.
TELEMETRY_RAW_RETENTION_DAYS = env.integer("TELEMETRY_RAW_RETENTION_DAYS", 7, minimum=1, maximum=3650)
TELEMETRY_ROLLUP_RETENTION_DAYS = env.integer("TELEMETRY_ROLLUP_RETENTION_DAYS", 90, minimum=1, maximum=3650)
# A model version's field baseline for drift: its first hours of telemetry.
TELEMETRY_BASELINE_HOURS = env.integer("TELEMETRY_BASELINE_HOURS", 24, minimum=1, maximum=24 * 30)
# How many queued messages the bridge stores in one transaction.
BRIDGE_BATCH_MESSAGES = env.integer("BRIDGE_BATCH_MESSAGES", 500, minimum=1, maximum=10_000)
# Worker threads per bridge, each with its own database connection; a device's
# messages always go to the same one.
BRIDGE_WORKERS = env.integer("BRIDGE_WORKERS", 2, minimum=1, maximum=16)
# A bridge's own, stable MQTT client id gives it a persistent session at the broker: what it had taken
# but not stored when it stopped (or died) is delivered again when it comes back under the same id
# (docs/operations.md, "Several bridges"). Unset: a fresh id and a clean session on every start.
BRIDGE_CLIENT_ID = env.string("BRIDGE_CLIENT_ID")
if BRIDGE_CLIENT_ID is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", BRIDGE_CLIENT_ID):
    raise ImproperlyConfigured("BRIDGE_CLIENT_ID: 1 to 64 letters, digits, '.', '_' or '-', starting alphanumeric.")
# The window around the receiving time a device's clock must fall in
# (docs/protocol.md, "Bounds"); outside it a message is refused as clock_skew.
# Wide by default: a refused telemetry batch is never acknowledged, so a
# genuine device with a wrong clock (a board without a real-time clock boots
# in 1970) would hold its outbox until it drops records. A device can only
# date its own records (ACL); what could stop the fleet (times no datetime
# holds in UTC, years 1 and 9999) is refused at any setting.
BRIDGE_CLOCK_MAX_AHEAD_S = env.integer("BRIDGE_CLOCK_MAX_AHEAD_S", 366 * 86400, minimum=0, maximum=10 * 366 * 86400)
BRIDGE_CLOCK_MAX_AGE_DAYS = env.integer("BRIDGE_CLOCK_MAX_AGE_DAYS", 36500, minimum=1, maximum=36500)
# How often a bridge writes its counters to the database for /metrics.
BRIDGE_STATS_INTERVAL_S = env.integer("BRIDGE_STATS_INTERVAL_S", 10, minimum=1, maximum=3600)
ALERT_WEBHOOK_TIMEOUT_S = env.integer("ALERT_WEBHOOK_TIMEOUT_S", 5, minimum=1, maximum=60)
ALERT_EMAIL_FROM = env.string("ALERT_EMAIL_FROM", "edgefleet@localhost")
# When set, /metrics wants "Authorization: Bearer <token>".
METRICS_TOKEN = env.secret("METRICS_TOKEN")
# Probes and per-process metrics (docs/operations.md). /readyz, and the probe port's, fails when one of
# these checks fails; each answer lists them all. The bridge, worker and beat serve /healthz, /readyz
# and /metrics on PROBE_PORT (0: off; the web process serves them on its own port).
READINESS_CHECKS = env.string_list("READINESS_CHECKS", ["database", "migrations", "task_queue", "mqtt"])
if _unknown_checks := set(READINESS_CHECKS) - {"database", "migrations", "task_queue", "mqtt"}:
    raise ImproperlyConfigured(f"READINESS_CHECKS: unknown check(s) {', '.join(sorted(_unknown_checks))}.")
HEALTH_CHECK_TIMEOUT_S = env.integer("HEALTH_CHECK_TIMEOUT_S", 2, minimum=1, maximum=30)
PROBE_PORT = env.integer("PROBE_PORT", 0, minimum=0, maximum=65535)
PROBE_ADDRESS = env.string("PROBE_ADDRESS", "0.0.0.0") or "0.0.0.0"  # noqa: S104 - a container's own interface
# A bridge worker thread that has not gone round its loop for this long fails the bridge's liveness.
BRIDGE_STUCK_AFTER_S = env.integer("BRIDGE_STUCK_AFTER_S", 300, minimum=10, maximum=86400)
# Bundles (and calibration files) in S3-compatible storage instead of MEDIA_ROOT: needs the `s3` extra
# (django-storages). Escalated frames stay under MEDIA_ROOT, a volume the web and worker processes share.
STORAGE_BACKEND = env.choice("STORAGE_BACKEND", "filesystem", ("filesystem", "s3"))
if STORAGE_BACKEND == "s3":
    _bucket = env.string("S3_BUCKET")
    # MinIO and other S3-compatible stores; unset for AWS itself.
    _endpoint = env.url("S3_ENDPOINT_URL", "", ("http", "https")) if env.string("S3_ENDPOINT_URL") else None
    if not _bucket:
        raise ImproperlyConfigured("S3_BUCKET must be set when STORAGE_BACKEND=s3.")
    STORAGES = {
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": _bucket,
                "endpoint_url": _endpoint,
                "region_name": env.string("S3_REGION"),
                "access_key": env.secret("S3_ACCESS_KEY_ID"),
                "secret_key": env.secret("S3_SECRET_ACCESS_KEY"),
                "location": env.string("S3_PREFIX", "") or "",
                # Bundles are private: only the control plane reads them, and serves them with HTTP Range.
                "default_acl": "private",
                "file_overwrite": False,
            },
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }

LOG_LEVEL = env.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"))
# One line per event, as the agent writes them (agent.kernel.logs): logfmt or JSON.
LOG_FORMAT = env.choice("LOG_FORMAT", "logfmt", ("logfmt", "json"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"structured": {"()": "agent.kernel.logs.StructuredFormatter", "output": LOG_FORMAT}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "amqtt": {"level": "WARNING"},
        "transitions": {"level": "WARNING"},
    },
}
