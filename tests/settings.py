"""Test settings: the example project on SQLite (default) or PostgreSQL (``HOOKPOST_DB=postgresql``).

A second alias, ``other``, holds the same tables so tests can show that an event is
written on the connection that made the change.
"""

import os

from example.settings import *  # noqa: F403
from example.settings import _database

if os.environ.get("HOOKPOST_DB", "sqlite") == "postgresql":
    DATABASES = {"default": _database(""), "other": _database("_other")}
    # One pair of test databases per test process, so runs side by side do not collide.
    DATABASES["default"]["TEST"] = {"NAME": f"test_hookpost_{os.getpid()}"}
    DATABASES["other"]["TEST"] = {"NAME": f"test_hookpost_other_{os.getpid()}"}
else:
    # Files, not memory: worker subprocesses must see the same database. One pair per process.
    _tmp = os.environ.get("TMPDIR", "/tmp")
    DATABASES = {
        alias: {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": f"{_tmp}/hookpost-{alias}.sqlite3",
            "TEST": {"NAME": f"{_tmp}/hookpost-test-{os.getpid()}-{alias}.sqlite3"},
            # Writers queue for the lock instead of failing with "database is locked".
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
        }
        for alias in ("default", "other")
    }

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGGING = {"version": 1, "disable_existing_loggers": False}

# Tests deliver to receivers on 127.0.0.1, over plain http.
HOOKPOST = {
    **HOOKPOST,  # noqa: F405
    "ALLOWED_NETWORKS": ["127.0.0.0/8"],
    "ALLOW_HTTP": True,
    "POLL_INTERVAL": 0.05,
}

ROOT_URLCONF = "tests.urls"

# The REST API (extra "api"). Tests run at a rate no test reaches, except the one proving 429.
INSTALLED_APPS = [*INSTALLED_APPS, "rest_framework", "drf_spectacular"]  # noqa: F405
REST_FRAMEWORK = {"DEFAULT_THROTTLE_RATES": {"hookpost": "100000/min", "hookpost_test": "100000/min"}}
