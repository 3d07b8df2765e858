"""PostgreSQL helpers the benchmarks share: connection parameters, their database, an outbox to start from."""

from __future__ import annotations

import datetime as dt
import os
import sys
from typing import Any


def pg_params(dbname: str) -> dict[str, Any]:
    """Connection parameters of the local PostgreSQL, as the example project reads them."""
    return {
        "host": os.environ.get("HOOKPOST_PG_HOST", "127.0.0.1"),
        "port": os.environ.get("HOOKPOST_PG_PORT", "5432"),
        "user": os.environ.get("HOOKPOST_PG_USER", "postgres"),
        "password": os.environ.get("HOOKPOST_PG_PASSWORD", ""),
        "dbname": dbname,
    }


def django_database(dbname: str) -> dict[str, Any]:
    """The Django ``DATABASES`` entry for database ``dbname`` on the local PostgreSQL."""
    pg = pg_params(dbname)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": pg["dbname"],
        "USER": pg["user"],
        "PASSWORD": pg["password"],
        "HOST": pg["host"],
        "PORT": pg["port"],
    }


def ensure_database(name: str, hint: str = "Start it (`make services`).") -> None:
    """Create database ``name`` when missing; exit 1 with a clear message if PostgreSQL is down."""
    import psycopg
    from psycopg import sql

    params = pg_params("postgres")
    try:
        with psycopg.connect(**params, autocommit=True, connect_timeout=5) as conn:
            query = "SELECT 1 FROM pg_database WHERE datname = %s"
            if not conn.execute(query, (name,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        print(
            f"PostgreSQL is unreachable at {params['host']}:{params['port']} as "
            f"{params['user']!r} ({exc}).\n{hint}",
            file=sys.stderr,
        )
        sys.exit(1)


def configure_hookpost(dbname: str) -> None:
    """Configure Django with hookpost alone on PostgreSQL database ``dbname``, loopback allowed."""
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only",
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "hookpost"],
        DATABASES={"default": django_database(dbname)},
        HOOKPOST={"ALLOWED_NETWORKS": ["127.0.0.0/8"], "ALLOW_HTTP": True},
        LOGGING_CONFIG=None,
    )
    django.setup()


def empty_outbox() -> None:
    """Migrate the configured database and empty hookpost's tables."""
    from django.core.management import call_command
    from django.db import connection

    from hookpost.models import Attempt, Delivery, Endpoint, Event

    call_command("migrate", verbosity=0, interactive=False)
    tables = ", ".join(m._meta.db_table for m in (Attempt, Delivery, Event, Endpoint))
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {tables} CASCADE")


def fanned_out_events(type_prefix: str, count: int, occurred_at: dt.datetime) -> None:
    """Commit ``count`` events typed ``<type_prefix>.e<n>`` and fan them out, 5,000 at a time."""
    from hookpost import outbox

    for start in range(0, count, 5000):
        drafts = [
            outbox.EventDraft(f"{type_prefix}.e{start + i}", "{}", occurred_at)
            for i in range(min(5000, count - start))
        ]
        outbox.record_events("default", drafts)
    while outbox.fan_out(limit=5000):
        pass
