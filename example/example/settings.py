"""Settings of the example project: a library whose books, authors and tags emit webhooks.

``HOOKPOST_DB=postgresql`` switches the database from SQLite to PostgreSQL on
127.0.0.1 (``HOOKPOST_PG_*`` variables override the connection).
"""

import os
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-insecure-key-for-local-use-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "hookpost",
    "library",
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

ROOT_URLCONF = "example.urls"

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

WSGI_APPLICATION = "example.wsgi.application"


def _database(name: str) -> dict[str, object]:
    if os.environ.get("HOOKPOST_DB", "sqlite") == "postgresql":
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("HOOKPOST_PG_NAME", "hookpost_example") + name,
            "USER": os.environ.get("HOOKPOST_PG_USER", "postgres"),
            "PASSWORD": os.environ.get("HOOKPOST_PG_PASSWORD", ""),
            "HOST": os.environ.get("HOOKPOST_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("HOOKPOST_PG_PORT", "5432"),
        }
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("HOOKPOST_SQLITE_PATH", str(BASE_DIR / f"db{name}.sqlite3")),
        # Writers (the app and the worker) queue for the lock instead of failing at once.
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
    }


DATABASES = {"default": _database("")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
MEDIA_ROOT = BASE_DIR / "media"

HOOKPOST: dict[str, Any] = {
    # Seals endpoint secrets at rest. A real project reads it from its secret store; this
    # example key is public, like SECRET_KEY above.
    "ENCRYPTION_KEYS": [
        os.environ.get("HOOKPOST_ENCRYPTION_KEY", "BXtiXusfr6G_hRoqG-Sy4ihrTUu3iyGt-OZUrMlL33U=")
    ],
    # Tag is registered here, in settings; Author and Book in library/apps.py, in code.
    "MODELS": {
        "library.Tag": {"actions": ["created", "deleted"], "fields": ["name"]},
    },
}

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"hookpost": {"handlers": ["console"], "level": "INFO"}},
}

if os.environ.get("HOOKPOST_DEMO") == "1":
    # The demo's receivers listen on 127.0.0.1 over plain http.
    HOOKPOST["ALLOWED_NETWORKS"] = ["127.0.0.0/8"]
    HOOKPOST["ALLOW_HTTP"] = True
    HOOKPOST["POLL_INTERVAL"] = 0.05
    LOGGING["loggers"]["hookpost"]["level"] = "WARNING"
