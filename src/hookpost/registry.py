"""What to emit: the models and signals registered for webhooks, and the catalog of event types."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.db import models
from django.dispatch import Signal
from django.utils.module_loading import import_string

from hookpost import capture
from hookpost.conf import hookpost_settings
from hookpost.events import (
    ACTIONS,
    CASCADE_EMIT,
    ModelSpec,
    make_model_spec,
    model_spec_problems,
    validate_event_type,
)
from hookpost.exceptions import AlreadyRegistered, ConfigurationError

#: Options a model registration accepts, in ``register()`` and in ``HOOKPOST["MODELS"]``.
MODEL_OPTIONS = frozenset(
    {"actions", "fields", "serializer", "when_changed", "cascade", "type_prefix", "include_raw"}
)


@dataclass(frozen=True)
class SignalSpec:
    """A custom signal registered to emit ``event_type`` with a payload built from its kwargs."""

    signal: Signal
    event_type: str
    payload: capture.PayloadBuilder
    using: str | capture.UsingResolver | None = None


class Registry:
    """Holds registrations and keeps signal receivers connected to match them."""

    def __init__(self) -> None:
        self._models: dict[type[models.Model], ModelSpec] = {}
        # The senders each model spec's receivers are connected to: the model and its proxies.
        self._senders: dict[type[models.Model], tuple[type[models.Model], ...]] = {}
        self._signals: dict[str, SignalSpec] = {}
        # Registrations made before the app registry had loaded every model.
        self._pending: list[tuple[type[models.Model], dict[str, Any]]] = []

    # -- models --

    def register(
        self,
        model: type[models.Model],
        *,
        actions: list[str] | tuple[str, ...] = ACTIONS,
        fields: list[str] | tuple[str, ...] | str | None = None,
        serializer: Any = None,
        when_changed: list[str] | tuple[str, ...] = (),
        cascade: str = CASCADE_EMIT,
        type_prefix: str | None = None,
        include_raw: bool = False,
    ) -> ModelSpec | None:
        """Emit webhooks for ``model``: its ``actions``, with ``fields`` (a list or ``"__all__"``).

        ``serializer`` (a callable taking the instance, or a serializer class)
        replaces the field snapshot; ``when_changed`` limits ``updated`` events to
        saves that change one of those fields; ``cascade="skip"`` drops deletes
        cascaded from another model. Returns the spec, or None while models are
        still loading (the registration is then completed in ``ready()``).
        """
        options = {
            "actions": actions,
            "fields": fields,
            "serializer": serializer,
            "when_changed": when_changed,
            "cascade": cascade,
            "type_prefix": type_prefix,
            "include_raw": include_raw,
        }
        if not apps.models_ready:
            self._pending.append((model, options))
            return None
        return self._register_now(model, options)

    def _register_now(self, model: type[models.Model], options: dict[str, Any]) -> ModelSpec:
        if model in self._models:
            raise AlreadyRegistered(
                "hookpost.E010", f"{model._meta.label} is already registered for webhooks"
            )
        spec = make_model_spec(model, **options)
        self._check_types_free(spec.event_types, owner=model._meta.label)
        self._models[model] = spec
        self._rewire()
        return spec

    def unregister(self, model: type[models.Model]) -> None:
        """Stop emitting webhooks for ``model`` and disconnect its receivers."""
        spec = self._models.pop(model, None)
        if spec is None:
            raise LookupError(f"{model._meta.label} is not registered for webhooks")
        capture.disconnect_model(spec, self._senders.pop(model, ()))
        self._rewire()

    def spec_for(self, model: type[models.Model]) -> ModelSpec | None:
        """The registration of ``model``, if it has one."""
        return self._models.get(model)

    def _wanted_senders(self, model: type[models.Model]) -> tuple[type[models.Model], ...]:
        # Django sends a proxy instance's signals with the proxy as sender: a row deleted
        # through a proxy is still a row of the model, unless the proxy has its own registration.
        proxies = tuple(
            m for m in apps.get_models() if m._meta.proxy and issubclass(m, model) and m not in self._models
        )
        return (model, *proxies)

    def _rewire(self) -> None:
        """Connect each spec to exactly its wanted senders, after any change of registrations."""
        for model, spec in self._models.items():
            wanted = self._wanted_senders(model)
            current = self._senders.get(model, ())
            if wanted != current:
                capture.disconnect_model(spec, [s for s in current if s not in wanted])
                capture.connect_model(spec, [s for s in wanted if s not in current])
                self._senders[model] = wanted

    @property
    def model_specs(self) -> list[ModelSpec]:
        """Every model registration, in registration order."""
        return list(self._models.values())

    # -- signals --

    def register_signal(
        self,
        signal: Signal,
        event_type: str,
        payload: capture.PayloadBuilder,
        *,
        using: str | capture.UsingResolver | None = None,
    ) -> SignalSpec:
        """Emit an ``event_type`` event whenever ``signal`` is sent.

        ``payload(sender, **kwargs)`` builds the event's ``data`` from the
        signal's arguments. The event is written on ``using`` (an alias, or a
        callable taking the same arguments), else on the signal's own ``using``
        argument, else where the router puts hookpost's events.
        """
        validate_event_type(event_type)
        if not callable(payload):
            raise ConfigurationError(
                "hookpost.E003", f"{event_type}: payload must be callable, got {payload!r}"
            )
        if event_type in self._signals:
            raise AlreadyRegistered("hookpost.E010", f"{event_type} is already registered")
        self._check_types_free([event_type], owner=f"signal {event_type}")
        spec = SignalSpec(signal, event_type, payload, using)
        self._signals[event_type] = spec
        capture.connect_signal(signal, event_type, payload, using)
        return spec

    def unregister_signal(self, event_type: str) -> None:
        """Stop emitting ``event_type`` from its signal."""
        spec = self._signals.pop(event_type, None)
        if spec is None:
            raise LookupError(f"no signal is registered for {event_type!r}")
        capture.disconnect_signal(spec.signal, event_type)

    @property
    def signal_specs(self) -> list[SignalSpec]:
        """Every signal registration, in registration order."""
        return list(self._signals.values())

    # -- catalog --

    def event_types(self) -> list[str]:
        """Every event type a registration can emit, sorted (the catalog endpoints pick from)."""
        types = {t for spec in self._models.values() for t in spec.event_types}
        types.update(self._signals)
        return sorted(types)

    def _check_types_free(self, types: list[str], owner: str) -> None:
        taken = set(self.event_types()) & set(types)
        if taken:
            raise AlreadyRegistered(
                "hookpost.E010",
                f"{owner} would emit {', '.join(sorted(taken))}, which another registration "
                "already emits (give it a different type_prefix)",
            )

    # -- start-up --

    def complete_pending(self) -> None:
        """Finish registrations made while models were loading (called from ``ready()``)."""
        pending, self._pending = self._pending, []
        for model, options in pending:
            self._register_now(model, options)

    def load_settings(self) -> None:
        """Register the models of ``HOOKPOST["MODELS"]`` that are valid (checks report the rest)."""
        for model, options in settings_registrations():
            if model in self._models:
                raise AlreadyRegistered(
                    "hookpost.E010",
                    f"{model._meta.label} is registered both in HOOKPOST['MODELS'] and in code",
                )
            if not model_spec_problems(model, **_problem_options(options)):
                self._register_now(model, options)

    @contextlib.contextmanager
    def isolated(self) -> Iterator[Registry]:
        """Let a block register and unregister freely; restore the previous registrations after."""
        saved_models, saved_signals = dict(self._models), dict(self._signals)
        saved_senders = dict(self._senders)
        try:
            yield self
        finally:
            for model, spec in list(self._models.items()):
                capture.disconnect_model(spec, self._senders.get(model, ()))
            for sspec in list(self._signals.values()):
                capture.disconnect_signal(sspec.signal, sspec.event_type)
            self._models, self._signals = saved_models, saved_signals
            self._senders = saved_senders
            for model, spec in self._models.items():
                capture.connect_model(spec, self._senders[model])
            for sspec in self._signals.values():
                capture.connect_signal(sspec.signal, sspec.event_type, sspec.payload, sspec.using)


def _problem_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k != "include_raw"}


def settings_registrations() -> list[tuple[type[models.Model], dict[str, Any]]]:
    """The ``(model, options)`` pairs of ``HOOKPOST["MODELS"]`` that name a real model.

    Options get their defaults and a dotted-path serializer is imported; an
    unimportable one is left as the string so the system check can name it.
    """
    found = []
    declared = hookpost_settings.MODELS
    if not isinstance(declared, dict):
        return []
    for label, raw in declared.items():
        if not isinstance(label, str) or not isinstance(raw, dict):
            continue
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError):
            continue
        options = {
            "actions": ACTIONS,
            "fields": None,
            "serializer": None,
            "when_changed": (),
            "cascade": CASCADE_EMIT,
            "type_prefix": None,
            "include_raw": False,
        }
        options.update({k: v for k, v in raw.items() if k in MODEL_OPTIONS})
        if isinstance(options["serializer"], str):
            with contextlib.suppress(ImportError):
                options["serializer"] = import_string(options["serializer"])
        found.append((model, options))
    return found


registry = Registry()
register = registry.register
unregister = registry.unregister
register_signal = registry.register_signal
unregister_signal = registry.unregister_signal
