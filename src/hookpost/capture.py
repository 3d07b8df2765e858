"""Turn Django signals into event rows, written on the changing connection inside its transaction.

Receivers are connected per registered model (``sender=``), so models nobody
registered keep Django's fast delete. Nothing here does network I/O.

Bulk deletes: Django's ``Collector`` sends every ``pre_delete`` of a delete
before the first ``post_delete``, all inside one transaction. ``pre_delete``
snapshots each instance (while its row, and any deferred column, can still be
read); the first ``post_delete`` of the same ``(using, origin)`` writes the whole
batch with multi-row INSERTs; the remaining ``post_delete`` calls only count down.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from django.db import DatabaseError, connections, models, router, transaction
from django.db.models.signals import post_delete, post_init, post_save, pre_delete
from django.dispatch import Signal
from django.utils import timezone

from hookpost import outbox
from hookpost.conf import hookpost_settings
from hookpost.events import (
    CASCADE_SKIP,
    M2M_ATTR,
    Frame,
    ModelSpec,
    describe_origin,
    encode_lossy,
    is_cascade,
    snapshot,
    validate_event_type,
)
from hookpost.exceptions import PayloadError
from hookpost.models import Event
from hookpost.signals import payload_invalid

logger = logging.getLogger("hookpost.capture")

#: Where ``when_changed`` keeps the values an instance was loaded (or last saved) with.
LOADED_ATTR = "_hookpost_loaded"
# Where a save's values wait for its transaction to commit (a ``_Pending``).
PENDING_ATTR = "_hookpost_pending"

PayloadBuilder = Callable[..., Any]
UsingResolver = Callable[..., str]


# --- drafting events --------------------------------------------------------------------------


def draft_event(frame: Frame, build_data: Callable[[], Any], *, using: str) -> outbox.EventDraft:
    """Build and encode an event; a payload problem becomes an invalid event (or raises if STRICT)."""
    data: Any = None
    try:
        data = build_data()
        payload = frame.encode(data)
    except DatabaseError:
        # The transaction is broken either way; the user must see the database's error.
        raise
    except Exception as exc:
        if hookpost_settings.STRICT:
            raise
        error = str(exc) if isinstance(exc, PayloadError) else f"{type(exc).__qualname__}: {exc}"
        logger.warning("event %s recorded as invalid: %s", frame.event_type, error)
        payload_invalid.send(sender=Event, event_type=frame.event_type, error=error, using=using)
        payload = encode_lossy(frame.envelope(data))
        return outbox.EventDraft(
            frame.event_type, payload, frame.occurred_at, frame.origin, frame.origin_json, error
        )
    return outbox.EventDraft(frame.event_type, payload, frame.occurred_at, frame.origin, frame.origin_json)


def _draft_now(
    event_type: str,
    build_data: Callable[[], Any],
    *,
    using: str,
    origin: dict[str, Any] | None = None,
) -> outbox.EventDraft:
    return draft_event(Frame.build(event_type, timezone.now(), origin), build_data, using=using)


def emit(event_type: str, data: Any, *, using: str | None = None) -> Event:
    """Write an event for a change Django sends no signal for (``QuerySet.update``, ``bulk_create``).

    The event is written on ``using`` (default: the database router's choice for
    hookpost's ``Event``), inside the transaction open there. Unlike captured
    signals, a payload that cannot be encoded raises ``PayloadError`` at once:
    the caller is right here to fix it.
    """
    validate_event_type(event_type)
    using = using or router.db_for_write(Event)
    frame = Frame.build(event_type, timezone.now())
    return outbox.record_event(using, outbox.EventDraft(event_type, frame.encode(data), frame.occurred_at))


# --- saves ------------------------------------------------------------------------------------


def _watched(instance: models.Model, spec: ModelSpec) -> dict[str, Any]:
    values = instance.__dict__
    return {attname: values[attname] for attname in spec.when_changed_attnames if attname in values}


def _remember_loaded(instance: models.Model, spec: ModelSpec) -> None:
    instance.__dict__[LOADED_ATTR] = _watched(instance, spec)
    instance.__dict__.pop(PENDING_ATTR, None)


class _Pending:
    """A save's watched values, the on-commit callback that adopts them, and its alias."""

    __slots__ = ("adopt", "using", "values")

    def __init__(self, values: dict[str, Any], adopt: Callable[[], None] | None, using: str) -> None:
        self.values, self.adopt, self.using = values, adopt, using

    def __reduce__(self) -> tuple[Any, ...]:
        # A pickled or copied instance is not part of the transaction: it keeps no pending values.
        return (_Pending, ({}, None, self.using))


def _remember_saved(instance: models.Model, spec: ModelSpec, using: str) -> None:
    """Make the saved values the ``when_changed`` baseline once the save commits.

    Until then they are a pending baseline that later saves in the same transaction
    compare against; a rollback discards it, so a retried save still emits its update.
    """
    if not connections[using].in_atomic_block:
        _remember_loaded(instance, spec)
        return
    values = _watched(instance, spec)
    ref = weakref.ref(instance)

    def adopt() -> None:
        saved = ref()
        pending = saved.__dict__.get(PENDING_ATTR) if saved is not None else None
        # Only the latest save's callback adopts: an earlier one would bring back older values.
        if saved is not None and pending is not None and pending.adopt is adopt:
            saved.__dict__[LOADED_ATTR] = values
            del saved.__dict__[PENDING_ATTR]

    instance.__dict__[PENDING_ATTR] = _Pending(values, adopt, using)
    transaction.on_commit(adopt, using=using)


def _baseline(instance: models.Model) -> dict[str, Any] | None:
    """The watched values the next save compares against: pending if its save still stands."""
    pending: _Pending | None = instance.__dict__.get(PENDING_ATTR)
    if pending is not None:
        connection = connections[pending.using]
        # A rollback (of the transaction, or of the savepoint the save was in) drops the
        # save's on-commit callback; while the callback is queued, the save stands.
        adopt = pending.adopt
        if (
            adopt is not None
            and connection.in_atomic_block
            and any(e[1] is adopt for e in connection.run_on_commit)
        ):
            return pending.values
        del instance.__dict__[PENDING_ATTR]
    return instance.__dict__.get(LOADED_ATTR)


def _has_changed(instance: models.Model, spec: ModelSpec, update_fields: frozenset[str] | None) -> bool:
    if update_fields is not None and not any(
        name in update_fields or attname in update_fields
        for name, attname in zip(spec.when_changed, spec.when_changed_attnames, strict=True)
    ):
        return False
    loaded = _baseline(instance)
    if loaded is None:
        # Built by hand rather than loaded: the previous state is unknown, so say it changed.
        return True
    values = instance.__dict__
    missing = object()
    return any(
        attname not in loaded or values.get(attname, missing) != loaded[attname]
        for attname in spec.when_changed_attnames
    )


def _load_deferred(instance: models.Model, spec: ModelSpec, using: str) -> None:
    deferred = spec.deferred_attnames(instance)
    if deferred:
        names = [name for name, f in spec.concrete if f.attname in deferred]
        instance.refresh_from_db(using=using, fields=names)


def _post_save_receiver(spec: ModelSpec) -> Callable[..., None]:
    def on_post_save(
        sender: type[models.Model],
        instance: models.Model,
        created: bool,
        raw: bool,
        using: str,
        update_fields: frozenset[str] | None,
        **kwargs: Any,
    ) -> None:
        action = "created" if created else "updated"
        emits = action in spec.actions and (raw is False or spec.include_raw)
        if emits and not created and spec.when_changed:
            emits = _has_changed(instance, spec, update_fields)
        if spec.when_changed:
            _remember_saved(instance, spec, using)
        if not emits:
            return
        _load_deferred(instance, spec, using)
        draft = _draft_now(spec.event_type(action), lambda: snapshot(instance, spec), using=using)
        outbox.record_event(using, draft)

    return on_post_save


def _post_init_receiver(spec: ModelSpec) -> Callable[..., None]:
    def on_post_init(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
        # ``_state.adding`` is still True here even for rows loaded by ``from_db``, so
        # every instance remembers its initial values; a created one is refreshed on save.
        _remember_loaded(instance, spec)

    return on_post_init


# --- deletes ------------------------------------------------------------------------------------


class _DeleteBatch:
    """The events of one ``Collector.delete()`` on one connection, between pre and post phases."""

    __slots__ = (
        "block",
        "drafts",
        "flushed",
        "frames",
        "links",
        "loaded",
        "occurred_at",
        "origin_ref",
        "outstanding",
        "scopes",
        "seen",
    )

    def __init__(self, origin_ref: weakref.ref[Any], block: object) -> None:
        self.origin_ref = origin_ref
        # The atomic block ``Collector.delete()`` opened: one per call, so a retried delete
        # of the same origin never joins the batch a refused one left behind.
        self.block = block
        # One delete happens at one moment: its events share a timestamp.
        self.occurred_at = timezone.now()
        # Envelope frames, encoded once per (model, cascaded or not).
        self.frames: dict[tuple[type[models.Model], bool], Frame] = {}
        self.drafts: list[outbox.EventDraft] = []
        self.seen: set[tuple[str, Any]] = set()
        self.outstanding = 0
        self.flushed = False
        # Deferred columns fetched in one query per model: {model: {pk: {attname: value}}}.
        self.loaded: dict[type[models.Model], dict[Any, dict[str, Any]]] = {}
        # Many-to-many pks read in one query per field: {model: {field: {pk: [pk, …]}}}.
        self.links: dict[type[models.Model], dict[str, dict[Any, list[Any]]]] = {}
        # Per model, a query naming the rows the delete removes, or None (read one by one).
        self.scopes: dict[type[models.Model], models.QuerySet[models.Model] | None] = {}


class _BatchState(threading.local):
    def __init__(self) -> None:
        self.batches: dict[tuple[str, int], _DeleteBatch] = {}


_state = _BatchState()


def _current_block(using: str) -> object:
    """The innermost atomic block open on ``using`` (the Collector's, during its delete), or None."""
    blocks = connections[using].atomic_blocks
    return blocks[-1] if blocks else None


def _batch_for_pre_delete(using: str, origin: object, identity: tuple[str, Any]) -> _DeleteBatch:
    batches = _state.batches
    key = (using, id(origin))
    batch = batches.get(key)
    block = _current_block(using)
    if (
        batch is None
        or batch.flushed
        or identity in batch.seen
        or batch.origin_ref() is not origin
        or batch.block is not block
    ):
        # A new delete. A batch left behind here belonged to a delete that failed
        # before its post phase (its transaction is rolled back): drop it.
        def forget(ref: weakref.ref[Any], key: tuple[str, int] = key) -> None:
            stale = batches.get(key)
            if stale is not None and stale.origin_ref is ref:
                del batches[key]

        batch = _DeleteBatch(weakref.ref(origin, forget), block)
        batches[key] = batch
    return batch


def _preload_for_delete(
    instance: models.Model, spec: ModelSpec, using: str, origin: object, batch: _DeleteBatch
) -> None:
    """Load deferred payload columns and many-to-many pks, in bulk when the origin allows it.

    When the rows the delete removes can be named by one query (see ``_deleted_rows``),
    one query per model reads their deferred columns and one per many-to-many field
    reads their links; otherwise each instance is read alone.
    """
    deferred = spec.deferred_attnames(instance)
    wants_links = bool(spec.many_to_many) and spec.serializer is None
    if not deferred and not wants_links:
        return
    model = type(instance)
    if model not in batch.scopes:
        batch.scopes[model] = _deleted_rows(model, using, origin)
    scope = batch.scopes[model]
    if deferred:
        rows = batch.loaded.get(model)
        if rows is None and scope is not None:
            rows = batch.loaded[model] = _fetch_columns(model, spec, scope)
        row = rows.get(instance.pk) if rows else None
        if row is not None:
            for attname in deferred:
                instance.__dict__[attname] = row[attname]
        else:
            _load_deferred(instance, spec, using)
    if wants_links and scope is not None:
        links = batch.links.get(model)
        if links is None:
            links = batch.links[model] = _fetch_links(model, spec, scope)
        instance.__dict__[M2M_ATTR] = {name: by_pk.get(instance.pk, []) for name, by_pk in links.items()}


def _deleted_rows(
    model: type[models.Model], using: str, origin: object
) -> models.QuerySet[models.Model] | None:
    """A query for the rows of ``model`` that a delete from ``origin`` removes, when one is easy.

    ``qs.delete()`` removes the rows of ``qs``; a delete of other rows removes the rows
    of ``model`` whose cascading foreign key points at them (the common one-level
    cascade, such as an author's books). Rows this misses are read one by one.
    """
    if isinstance(origin, models.QuerySet):
        origin_model: type[models.Model] = origin.model
        origin_pks: Any = origin.values("pk")
    elif isinstance(origin, models.Model):
        origin_model, origin_pks = type(origin), [origin.pk]
    else:
        return None
    manager = model._base_manager.db_manager(using)
    if origin_model._meta.concrete_model is model._meta.concrete_model:
        # A single instance is read alone: one query either way.
        return manager.filter(pk__in=origin_pks) if isinstance(origin, models.QuerySet) else None
    condition = models.Q()
    for field in model._meta.concrete_fields:
        remote = field.remote_field
        if (
            remote is not None
            and field.many_to_one
            and remote.on_delete is models.CASCADE
            and field.related_model._meta.concrete_model is origin_model._meta.concrete_model  # type: ignore[union-attr]
        ):
            condition |= models.Q(**{f"{field.name}__in": origin_pks})
    return manager.filter(condition) if condition else None


def _fetch_columns(
    model: type[models.Model], spec: ModelSpec, scope: models.QuerySet[models.Model]
) -> dict[Any, dict[str, Any]]:
    attnames = [f.attname for _, f in spec.concrete]
    names = [f.name for _, f in spec.concrete]
    fetched = scope.values_list(model._meta.pk.attname, *names)
    return {row[0]: dict(zip(attnames, row[1:], strict=True)) for row in fetched}


def _fetch_links(
    model: type[models.Model], spec: ModelSpec, scope: models.QuerySet[models.Model]
) -> dict[str, dict[Any, list[Any]]]:
    links: dict[str, dict[Any, list[Any]]] = {}
    for name in spec.many_to_many:
        field = model._meta.get_field(name)
        through = field.remote_field.through  # type: ignore[union-attr]
        source = field.m2m_field_name()  # type: ignore[union-attr]
        target = field.m2m_reverse_field_name()  # type: ignore[union-attr]
        by_pk: dict[Any, list[Any]] = {}
        pairs = (
            through._base_manager.using(scope.db)
            .filter(**{f"{source}__in": scope.values("pk")})
            .order_by("pk")
            .values_list(f"{source}_id", f"{target}_id")
        )
        for source_pk, target_pk in pairs:
            by_pk.setdefault(source_pk, []).append(target_pk)
        links[name] = by_pk
    return links


def _skipped_as_cascade(spec: ModelSpec, instance: models.Model, origin: object) -> bool:
    if spec.cascade != CASCADE_SKIP:
        return False
    if isinstance(origin, models.QuerySet):
        origin_model: type[models.Model] = origin.model
    elif isinstance(origin, models.Model):
        origin_model = type(origin)
    else:
        return False
    return origin_model._meta.concrete_model is not type(instance)._meta.concrete_model


def _pre_delete_receiver(spec: ModelSpec) -> Callable[..., None]:
    event_type = spec.event_type("deleted")

    def on_pre_delete(
        sender: type[models.Model],
        instance: models.Model,
        using: str,
        origin: object = None,
        **kwargs: Any,
    ) -> None:
        if _skipped_as_cascade(spec, instance, origin):
            return
        if origin is None:
            # Not sent by a Collector (no origin): no batch to join; post_delete writes it alone.
            _load_deferred(instance, spec, using)
            instance.__dict__["_hookpost_delete_draft"] = _draft_now(
                event_type, lambda: snapshot(instance, spec), using=using
            )
            return
        identity = (spec.label, instance.pk)
        batch = _batch_for_pre_delete(using, origin, identity)
        _preload_for_delete(instance, spec, using, origin, batch)
        key = (type(instance), is_cascade(origin, instance))
        frame = batch.frames.get(key)
        if frame is None:
            frame = batch.frames[key] = Frame.build(
                event_type, batch.occurred_at, describe_origin(origin, instance)
            )
        batch.drafts.append(draft_event(frame, lambda: snapshot(instance, spec), using=using))
        instance.__dict__.pop(M2M_ATTR, None)
        batch.seen.add(identity)
        batch.outstanding += 1

    return on_pre_delete


def _post_delete_receiver(spec: ModelSpec) -> Callable[..., None]:
    event_type = spec.event_type("deleted")

    def on_post_delete(
        sender: type[models.Model],
        instance: models.Model,
        using: str,
        origin: object = None,
        **kwargs: Any,
    ) -> None:
        if _skipped_as_cascade(spec, instance, origin):
            return
        batch = _state.batches.get((using, id(origin))) if origin is not None else None
        if batch is None or batch.origin_ref() is not origin or batch.block is not _current_block(using):
            # No pre_delete was seen for this delete (or it was sent by hand): write it alone,
            # from what the instance still holds.
            draft = instance.__dict__.pop("_hookpost_delete_draft", None) or _draft_now(
                event_type,
                lambda: snapshot(instance, spec),
                using=using,
                origin=describe_origin(origin, instance),
            )
            outbox.record_event(using, draft)
            return
        if not batch.flushed:
            # First post_delete of the delete: every pre_delete has run, so the batch is complete.
            outbox.record_events(using, batch.drafts)
            batch.flushed = True
            batch.drafts = []
            batch.loaded = {}
            batch.links = {}
            batch.frames = {}
            batch.scopes = {}
        batch.outstanding -= 1
        if batch.outstanding <= 0:
            del _state.batches[(using, id(origin))]

    return on_post_delete


# --- connecting -----------------------------------------------------------------------------------


def _uid(spec: ModelSpec, signal_name: str) -> str:
    return f"hookpost:{signal_name}:{spec.label}"


def _receivers(spec: ModelSpec) -> list[tuple[str, Signal, Callable[..., None]]]:
    wanted: list[tuple[str, Signal, Callable[..., None]]] = []
    if spec.actions & {"created", "updated"}:
        wanted.append(("post_save", post_save, _post_save_receiver(spec)))
    if spec.when_changed and "updated" in spec.actions:
        wanted.append(("post_init", post_init, _post_init_receiver(spec)))
    if "deleted" in spec.actions:
        wanted.append(("pre_delete", pre_delete, _pre_delete_receiver(spec)))
        wanted.append(("post_delete", post_delete, _post_delete_receiver(spec)))
    return wanted


def connect_model(spec: ModelSpec, senders: Iterable[type[models.Model]]) -> None:
    """Connect the receivers ``spec`` needs to each of ``senders`` (its model, and its proxies)."""
    receivers = _receivers(spec)
    for sender in senders:
        for name, signal, receiver in receivers:
            signal.connect(receiver, sender=sender, weak=False, dispatch_uid=_uid(spec, name))


def disconnect_model(spec: ModelSpec, senders: Iterable[type[models.Model]]) -> None:
    """Disconnect every receiver ``connect_model`` connected for ``spec`` from ``senders``."""
    for sender in senders:
        for name, signal in (
            ("post_save", post_save),
            ("post_init", post_init),
            ("pre_delete", pre_delete),
            ("post_delete", post_delete),
        ):
            signal.disconnect(sender=sender, dispatch_uid=_uid(spec, name))


# --- custom signals -------------------------------------------------------------------------------


def signal_receiver(
    event_type: str, build_payload: PayloadBuilder, using: str | UsingResolver | None
) -> Callable[..., None]:
    """Return a receiver that writes an ``event_type`` event each time its signal is sent."""

    def on_signal(sender: Any, **kwargs: Any) -> None:
        if callable(using):
            alias = using(sender, **kwargs)
        else:
            alias = using or kwargs.get("using") or router.db_for_write(Event)
        draft = _draft_now(event_type, lambda: build_payload(sender, **kwargs), using=alias)
        outbox.record_event(alias, draft)

    return on_signal


def connect_signal(
    signal: Signal,
    event_type: str,
    build_payload: PayloadBuilder,
    using: str | UsingResolver | None = None,
) -> None:
    """Connect a receiver to ``signal`` that writes an ``event_type`` event."""
    signal.connect(
        signal_receiver(event_type, build_payload, using),
        weak=False,
        dispatch_uid=f"hookpost:signal:{event_type}",
    )


def disconnect_signal(signal: Signal, event_type: str) -> None:
    """Undo ``connect_signal``."""
    signal.disconnect(dispatch_uid=f"hookpost:signal:{event_type}")
