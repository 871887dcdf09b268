"""Settings read from the environment; every default runs with no service.

Defaults: SQLite (WAL) in the project folder and the in-memory channel layer,
in which case the web process runs scans itself. Set REDIS_URL and
DATABASE_URL to run many web and worker processes (see README).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url

from scans.addresses import parse_networks
from scraperproj.env import envbool, envfloat, envint, envlist

BASE_DIR = Path(__file__).resolve().parent.parent


def _secret_key() -> str:
    if os.getenv("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    # A key of this install's own, so that no shared default key ever runs.
    path = BASE_DIR / ".secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


def _ports(text: str) -> frozenset[int] | None:
    if text.strip() == "*":
        return None
    ports: set[int] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        low, _, high = item.partition("-")
        ports.update(range(int(low), int(high or low) + 1))
    return frozenset(ports)


SECRET_KEY = _secret_key()
DEBUG = envbool("DEBUG", "0")
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "daphne",
    # Before channels: our runworker command extends theirs.
    "scans",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "scraperproj.urls"
ASGI_APPLICATION = "scraperproj.asgi.application"

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
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}", conn_max_age=0
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Each socket's database_sync_to_async call would otherwise connect anew, which
    # costs more than its query. The pool checks a connection before handing it out,
    # so one broken by a restart of PostgreSQL is replaced, not used.
    DATABASES["default"]["OPTIONS"] = {"pool": {"min_size": 1, "max_size": 8}}
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

REDIS_URL = os.getenv("REDIS_URL", "")
# Two layers: "default" carries the wake-ups on "scan-jobs", "progress" what the pages see.
# Both carry hints; the database holds the truth, so what they drop loses nothing a page or
# a worker cannot rebuild.
if REDIS_URL:
    # redis-py 8 times a read out after 5 s by default, the very time channels-redis
    # blocks waiting for a message: a quiet worker would die of it. Longer, so only a
    # dead Redis times out.
    _REDIS_HOSTS = [{"address": REDIS_URL, "socket_timeout": 15}]
    # Several deployments (or test runs) may share one Redis: keys and pub/sub channels
    # (which are not per database) are named with it.
    _PREFIX = os.getenv("CHANNELS_PREFIX", "asgi")
    CHANNEL_LAYERS = {
        "default": {
            # Lists: each wake-up goes to one worker, the one that waited longest.
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": _REDIS_HOSTS,
                "prefix": _PREFIX,
                # Wake-ups waiting on "scan-jobs"; beyond it one is dropped, and the
                # workers' sweep finds its scan.
                "capacity": envint("CHANNELS_CAPACITY", 1000),
                # Seconds a wake-up waits unread; one no worker took is found by a sweep.
                "expiry": envint("CHANNELS_EXPIRY", 30),
            },
        },
        "progress": {
            # Pub/sub: a scan's group is a Redis channel each web process subscribes to
            # (scans.relay), and a progress message one PUBLISH.
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": _REDIS_HOSTS, "prefix": _PREFIX},
        },
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "scans.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": envint("CHANNELS_CAPACITY", 1000), "expiry": 30},
        }
    }
    CHANNEL_LAYERS["progress"] = CHANNEL_LAYERS["default"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns on every start without it
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "scans:list"
LOGOUT_REDIRECT_URL = "scans:new"

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

# What a scan may do. See the README for each knob.
SCANS_MAX_URLS = envint("SCANS_MAX_URLS", 1000)
SCANS_MAX_CONCURRENCY = envint("SCANS_MAX_CONCURRENCY", 100)
SCANS_DEFAULT_CONCURRENCY = min(envint("SCANS_DEFAULT_CONCURRENCY", 20), SCANS_MAX_CONCURRENCY)
SCANS_PER_HOST_LIMIT = envint("SCANS_PER_HOST_LIMIT", 10)
SCANS_TIMEOUT = envfloat("SCANS_TIMEOUT", 30.0)
SCANS_MAX_TIMEOUT = envfloat("SCANS_MAX_TIMEOUT", 120.0)
SCANS_CONNECT_TIMEOUT = envfloat("SCANS_CONNECT_TIMEOUT", 10.0)
SCANS_MAX_BYTES = envint("SCANS_MAX_BYTES", 10 * 1024 * 1024)
SCANS_MAX_REDIRECTS = envint("SCANS_MAX_REDIRECTS", 10)
SCANS_REQUIRE_LOGIN = envbool("SCANS_REQUIRE_LOGIN", "0")
SCANS_MAX_ACTIVE_PER_OWNER = envint("SCANS_MAX_ACTIVE_PER_OWNER", 5)
SCANS_WORKER_MAX_FETCHES = envint("SCANS_WORKER_MAX_FETCHES", 1000)
SCANS_LEASE_SECONDS = envfloat("SCANS_LEASE_SECONDS", 30.0)
SCANS_MAX_ATTEMPTS = envint("SCANS_MAX_ATTEMPTS", 3)
SCANS_ALLOWED_NETWORKS = parse_networks(os.getenv("SCANS_ALLOWED_NETWORKS", ""))
SCANS_ALLOWED_PORTS = _ports(os.getenv("SCANS_ALLOWED_PORTS", "80,443"))

# Each line once, with its time: not again through the root logger that daphne sets up.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"timed": {"format": "%(asctime)s %(levelname)-8s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "timed"}},
    "loggers": {
        name: {"handlers": ["console"], "level": level, "propagate": False}
        for name, level in (("scans", os.getenv("LOG_LEVEL", "INFO")), ("django", "INFO"))
    },
}
# Without Redis the in-memory layer cannot reach another process: the web process fetches.
SCANS_RUN_IN_WEB = envbool("SCANS_RUN_IN_WEB", "0" if REDIS_URL else "1")
# There, the fetches run in a child process, on the other core (scans/fetch_process.py).
SCANS_FETCH_IN_CHILD = envbool("SCANS_FETCH_IN_CHILD", "1" if SCANS_RUN_IN_WEB else "0")
# How often a scan's finished results are written and announced. A web process that fetches
# pays for each write in the time it fetches (one GIL); a worker's writes cost PostgreSQL
# more than itself, and results wait less. 40 ms in a worker: at 25 ms the writes of two
# workers took a tenth of the two cores from their fetches (docs/bench.md).
SCANS_FLUSH_SECONDS = envfloat("SCANS_FLUSH_SECONDS", 0.05 if SCANS_RUN_IN_WEB else 0.04)
