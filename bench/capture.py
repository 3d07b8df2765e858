"""Time hookpost's capture of a bulk delete against a no-op receiver, on SQLite and PostgreSQL.

Run: ``.venv/bin/python bench/capture.py [--rows 10000] [--rounds 5] [--db sqlite|postgresql|both]``
(or ``make bench``). PostgreSQL must listen on 127.0.0.1:5432 (``HOOKPOST_PG_*`` override
the connection); the script creates the database ``hookpost_bench`` when it is missing.
It prints one ``capture_ratio db=<db> value=<ratio>`` line per database, last.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "example", ROOT / "src", ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _postgres import django_database, ensure_database, pg_params  # noqa: E402

TARGET = 2.0
BENCH_DB = "hookpost_bench"
# The example's Book registration (example/library/apps.py) without its many-to-many "tags".
BOOK_FIELDS = ["title", "author", "isbn", "price", "published", "uid", "cover"]
BOOK_WHEN_CHANGED = ["title", "price"]
DB_LABELS = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


# --- settings -------------------------------------------------------------------------------


def configure_django(sqlite_path: str) -> None:
    """Configure Django for the example's apps, with one alias per database under test."""
    import django
    from django.conf import settings

    sqlite = {"ENGINE": "django.db.backends.sqlite3", "NAME": sqlite_path}
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only",
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "hookpost",
            "library",
        ],
        DATABASES={
            "default": sqlite,
            "sqlite": sqlite,
            "postgresql": django_database(BENCH_DB),
        },
        LOGGING_CONFIG=None,
    )
    django.setup()


def ensure_postgresql_database() -> None:
    """Create the benchmark's database when missing (exits 1 if PostgreSQL is down)."""
    ensure_database(BENCH_DB, "Start it (`make services`) or run with --db sqlite.")


# --- configurations -------------------------------------------------------------------------


def _noop_post_delete(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    return None


@dataclass(frozen=True)
class Config:
    """One way of listening to ``Book`` deletes, entered around each timed delete."""

    key: str
    label: str
    captures: bool
    enter: Callable[[], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def no_receiver() -> Iterator[None]:
    from hookpost.registry import registry
    from library.models import Book

    with registry.isolated():
        registry.unregister(Book)
        yield


@contextlib.contextmanager
def noop_receiver() -> Iterator[None]:
    from django.db.models.signals import post_delete

    from library.models import Book

    with no_receiver():
        post_delete.connect(_noop_post_delete, sender=Book, weak=False, dispatch_uid="bench-noop")
        try:
            yield
        finally:
            post_delete.disconnect(sender=Book, dispatch_uid="bench-noop")


@contextlib.contextmanager
def hookpost_without_m2m() -> Iterator[None]:
    from hookpost.registry import registry
    from library.models import Book

    with registry.isolated():
        registry.unregister(Book)
        registry.register(Book, fields=BOOK_FIELDS, when_changed=BOOK_WHEN_CHANGED)
        yield


@contextlib.contextmanager
def hookpost_example() -> Iterator[None]:
    from hookpost.registry import registry

    # The example project's own registration, untouched (isolated() only guards against leaks).
    with registry.isolated():
        yield


CONFIGS = [
    Config("none", "1 no receiver", False, no_receiver),
    Config("noop", "2 no-op post_delete receiver", False, noop_receiver),
    Config("hookpost", "3 hookpost (fields without tags)", True, hookpost_without_m2m),
    Config("example", "4 hookpost, example registration", True, hookpost_example),
]


# --- one database ---------------------------------------------------------------------------


@dataclass
class Results:
    """Seconds per timed delete, by configuration key."""

    rows: int
    times: dict[str, list[float]] = field(default_factory=dict)

    def median_us(self, key: str) -> float:
        return statistics.median(self.times[key]) / self.rows * 1e6

    def min_us(self, key: str) -> float:
        return min(self.times[key]) / self.rows * 1e6


def prepare_database(alias: str) -> None:
    """Migrate ``alias`` and remove rows a previous (interrupted) run may have left behind."""
    from django.core.management import call_command

    call_command("migrate", database=alias, verbosity=0, interactive=False)
    clear_rows(alias)


def clear_rows(alias: str) -> None:
    """Delete the benchmark's rows with plain SQL (no signals, no collector)."""
    from django.db import connections

    from hookpost.models import Event
    from library.models import Author, Book

    with connections[alias].cursor() as cursor:
        for model in (Book.tags.through, Book, Author, Event):
            cursor.execute(f"DELETE FROM {model._meta.db_table}")


def seed(alias: str, rows: int) -> None:
    """Fill ``alias`` with ``rows`` books of one author and an empty outbox."""
    import datetime as dt
    import decimal

    from django.db import connections

    from hookpost.models import Event
    from library.models import Author, Book

    clear_rows(alias)
    # bulk_create sends no signal: the author's own "created" event stays out of the outbox.
    [author] = Author.objects.using(alias).bulk_create(
        [Author(name="Ursula K. Le Guin", born=dt.date(1929, 10, 21))]
    )
    published = dt.date(1969, 3, 1)
    Book.objects.using(alias).bulk_create(
        (
            Book(
                title=f"The Left Hand of Darkness, volume {n}",
                author=author,
                isbn=f"978-0-441-{n:05d}-{n % 10}",
                price=decimal.Decimal("12.99") + n % 100,
                published=published + dt.timedelta(days=n % 3650),
                cover=f"covers/{n}.jpg",
            )
            for n in range(rows)
        ),
        batch_size=1000,
    )
    assert Event.objects.using(alias).count() == 0
    if connections[alias].vendor == "postgresql":
        # Each round leaves 10,000 dead rows: vacuum now, so autovacuum does not wake mid-timing.
        with connections[alias].cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {Book._meta.db_table}, {Event._meta.db_table}")


def timed_delete(alias: str, config: Config, rows: int) -> float:
    """Seed, then time one ``QuerySet.delete()`` (with its commit) under ``config``."""
    from django.db import transaction

    from hookpost.models import Event
    from library.models import Book

    seed(alias, rows)
    with config.enter():
        gc.collect()
        start = time.perf_counter()
        with transaction.atomic(using=alias):
            deleted, _ = Book.objects.using(alias).all().delete()
        elapsed = time.perf_counter() - start
    events = Event.objects.using(alias).count()
    assert deleted >= rows, f"{config.label}: deleted {deleted} rows, expected {rows}"
    assert Book.objects.using(alias).count() == 0
    expected = rows if config.captures else 0
    assert events == expected, f"{config.label}: {events} events written, expected {expected}"
    return elapsed


def run_database(alias: str, rows: int, rounds: int) -> Results:
    """Warm up, then run ``rounds`` interleaved rounds of every configuration on ``alias``."""
    results = Results(rows, {c.key: [] for c in CONFIGS})
    for config in CONFIGS:
        timed_delete(alias, config, rows)  # warm-up: caches, connection, file pages
    for round_no in range(rounds):
        # Rotate the order so no configuration always runs first (or right after a vacuum).
        shift = round_no % len(CONFIGS)
        for config in CONFIGS[shift:] + CONFIGS[:shift]:
            results.times[config.key].append(timed_delete(alias, config, rows))
        print(f"  round {round_no + 1}/{rounds} done", file=sys.stderr, flush=True)
    clear_rows(alias)
    return results


def report(alias: str, results: Results, rounds: int, where: str) -> float:
    """Print the table of one database and return hookpost's ratio to the no-op receiver."""
    noop = results.median_us("noop")
    print(f"\n{DB_LABELS[alias]} ({where}): QuerySet.delete() of {results.rows:,} books")
    print(f"  median of {rounds} interleaved rounds, timed with the commit")
    print(f"  {'configuration':<36} {'median µs/row':>14} {'min µs/row':>11} {'vs no-op':>9}")
    for config in CONFIGS:
        median, fastest = results.median_us(config.key), results.min_us(config.key)
        print(f"  {config.label:<36} {median:>14.2f} {fastest:>11.2f} {median / noop:>8.2f}x")
    ratio = results.median_us("hookpost") / noop
    verdict = "meets" if ratio <= TARGET else "MISSES"
    print(
        f"  hookpost / no-op = {ratio:.2f}x: {verdict} the target ≤ {TARGET:.1f}x "
        f"(hookpost adds {results.median_us('hookpost') - noop:.2f} µs/row)"
    )
    return ratio


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000, help="books per delete")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per configuration")
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args(argv)
    aliases = ["sqlite", "postgresql"] if args.db == "both" else [args.db]

    if "postgresql" in aliases:
        ensure_postgresql_database()
    with tempfile.TemporaryDirectory(prefix="hookpost-bench-") as tmp:
        sqlite_path = str(Path(tmp) / "bench.sqlite3")
        configure_django(sqlite_path)
        print("hookpost capture benchmark: what capturing a bulk delete costs per row")
        print(f"  3 = Book registered with fields={BOOK_FIELDS},")
        print(f"      when_changed={BOOK_WHEN_CHANGED}: the example's registration without its")
        print("      many-to-many 'tags', left out because a many-to-many field costs one query")
        print("      per book when books are deleted by cascade (author.delete())")
        print("  4 = the example's real registration, tags included, for information (the books")
        print("      have no tags; a direct QuerySet.delete() reads the links in one query)")
        print("  the ratio compared with the target is 3 / 2", flush=True)
        ratios: dict[str, float] = {}
        for alias in aliases:
            where = (
                "temporary file, PRAGMA defaults"
                if alias == "sqlite"
                else f"database {BENCH_DB} on {pg_params(BENCH_DB)['host']}"
            )
            print(f"{DB_LABELS[alias]}: migrating and running…", file=sys.stderr, flush=True)
            prepare_database(alias)
            results = run_database(alias, args.rows, args.rounds)
            ratios[alias] = report(alias, results, args.rounds, where)
        from django.db import connections

        connections.close_all()
    print()
    for alias, ratio in ratios.items():
        print(f"capture_ratio db={alias} value={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
