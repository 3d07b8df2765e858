"""Settings of the mirror project: a second Django project that receives the library's webhooks.

It keeps its own SQLite database (``MIRROR_SQLITE_PATH``) and accepts webhooks from
one source, "library", signed with the secret in ``MIRROR_LIBRARY_SECRET`` (the
library's endpoint secret). ``make demo`` starts it next to the library project.
"""

import os
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "mirror-insecure-key-for-local-use-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "hookpost",
    "mirror",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "inbound_site.urls"

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
            ],
        },
    },
]

WSGI_APPLICATION = "inbound_site.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("MIRROR_SQLITE_PATH", str(BASE_DIR / "db-mirror.sqlite3")),
        # Requests are served on threads: writers queue for the lock instead of failing at once.
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

HOOKPOST: dict[str, Any] = {
    # Seals source keys kept in the admin. This example key is public, like SECRET_KEY.
    "ENCRYPTION_KEYS": [
        os.environ.get("MIRROR_ENCRYPTION_KEY", "0dx8dIhD7occtsPMpRMw2SAP-iUoaKV1rNpClMlBUCA=")
    ],
    "RECEIVER_SOURCES": {
        "library": {
            # The library endpoint's signing secret. The default only lets the project start
            # (checks, migrations); nothing signed by a real sender will match it.
            "secrets": [
                os.environ.get("MIRROR_LIBRARY_SECRET", "whsec_bWlycm9yLWV4YW1wbGUtc2VjcmV0LW5vdC1yZWFsLTAw")
            ],
            "event_types": ["library.*"],
        },
    },
}

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "hookpost": {"handlers": ["console"], "level": "WARNING"},
        # The server's access log: only requests that went wrong (4xx, 5xx).
        "django.server": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
