"""System checks for the ``HOOKPOST`` setting, each problem with a stable id (``hookpost.E001``…)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet
from django.apps import AppConfig, apps
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from hookpost.conf import DEFAULTS, hookpost_settings
from hookpost.events import model_spec_problems
from hookpost.registry import MODEL_OPTIONS, settings_registrations
from hookpost.retry import RetryPolicy
from hookpost.sources import MODES, build

HINTS = {
    "hookpost.E001": "Use an 'app_label.ModelName' label of an installed app.",
    "hookpost.E002": "List field names the model declares (see Model._meta.get_fields()).",
    "hookpost.E003": "Give a callable, or the dotted path of one, that takes the instance.",
    "hookpost.E004": "Give a whole number of seconds, 0 or more (default 300).",
    "hookpost.E005": "Choose from 'created', 'updated' and 'deleted'.",
    "hookpost.E006": "Use 'emit' (default) or 'skip'.",
    "hookpost.E007": "HOOKPOST is a dict; MODELS maps model labels to dicts of options.",
    "hookpost.E008": "Give a list of field names, or '__all__' to send every concrete field.",
    "hookpost.E009": "Use dot-separated words such as 'shop.order'.",
    "hookpost.E011": "Give a whole number greater than 0.",
    "hookpost.E012": "Give True or False.",
    "hookpost.E013": "Give the dotted path of a class with an async send(request) method.",
    "hookpost.E014": "Give a list of networks in CIDR form, such as ['127.0.0.0/8', '10.1.0.0/16'].",
    "hookpost.E015": "Give a number of seconds greater than 0.",
    "hookpost.E016": "Give a list of delays such as [0, '5s', '5m', '2h'], or None for the default.",
    "hookpost.E017": "Use 'worker' (the hookpost_worker command) or 'celery'.",
    "hookpost.E018": "RECEIVER_SOURCES maps source names (letters, digits, '-', '_') to dicts such as "
    "{'secrets': ['whsec_…'], 'event_types': ['library.*'], 'mode': 'inline'}.",
    "hookpost.E019": "Use 'inline' (default), 'on_commit' or 'worker'.",
    "hookpost.E020": "Give a list of Fernet keys (hookpost.crypto.generate_key()), newest first.",
    "hookpost.E021": "Give a whole number of seconds, 0 or more (0: a rotated-out secret stops at once).",
}


def _error(check_id: str, message: str, obj: Any = None) -> Error:
    return Error(message, hint=HINTS.get(check_id), obj=obj, id=check_id)


@register(Tags.compatibility)
def check_settings(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """Validate ``settings.HOOKPOST``: known keys, sound values and valid model registrations."""
    from django.conf import settings

    raw = getattr(settings, "HOOKPOST", {})
    if not isinstance(raw, dict):
        return [_error("hookpost.E007", f"HOOKPOST must be a dict, got {type(raw).__name__}.")]
    messages: list[CheckMessage] = []
    for key in raw:
        if key not in DEFAULTS:
            messages.append(
                Warning(
                    f"HOOKPOST has an unknown key {key!r}; hookpost ignores it.",
                    hint=f"Known keys: {', '.join(sorted(DEFAULTS))}.",
                    id="hookpost.W001",
                )
            )
    tolerance = hookpost_settings.SIGNATURE_TOLERANCE
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        messages.append(_error("hookpost.E004", f"HOOKPOST['SIGNATURE_TOLERANCE'] is {tolerance!r}."))
    batch = hookpost_settings.CAPTURE_BATCH_SIZE
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        messages.append(_error("hookpost.E011", f"HOOKPOST['CAPTURE_BATCH_SIZE'] is {batch!r}."))
    if not isinstance(hookpost_settings.STRICT, bool):
        messages.append(_error("hookpost.E012", f"HOOKPOST['STRICT'] is {hookpost_settings.STRICT!r}."))
    messages.extend(_check_models(hookpost_settings.MODELS))
    messages.extend(_check_delivery())
    messages.extend(_check_receiver())
    messages.extend(_check_encryption())
    return messages


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _check_delivery() -> list[CheckMessage]:
    """Validate the delivery settings the worker reads."""
    messages: list[CheckMessage] = []
    try:
        transport = import_string(hookpost_settings.TRANSPORT)
        if not callable(getattr(transport, "send", None)):
            raise ImportError("no send method")
    except (ImportError, TypeError, ValueError) as exc:
        messages.append(
            _error("hookpost.E013", f"HOOKPOST['TRANSPORT'] = {hookpost_settings.TRANSPORT!r}: {exc}.")
        )
    networks = hookpost_settings.ALLOWED_NETWORKS
    try:
        if isinstance(networks, str) or not isinstance(networks, list | tuple):
            raise ValueError("not a list")
        for network in networks:
            ipaddress.ip_network(network)
    except (TypeError, ValueError) as exc:
        messages.append(_error("hookpost.E014", f"HOOKPOST['ALLOWED_NETWORKS'] = {networks!r}: {exc}."))
    for name in (
        "CONNECT_TIMEOUT",
        "TOTAL_TIMEOUT",
        "MAX_RESPONSE_BYTES",
        "MAX_IN_FLIGHT",
        "CIRCUIT_THRESHOLD",
        "CIRCUIT_COOLDOWN",
        "DISABLE_AFTER",
        "LEASE_SECONDS",
        "POLL_INTERVAL",
        "RETENTION_DAYS",
        "MAX_RETRY_AFTER",
    ):
        value = getattr(hookpost_settings, name)
        if not _positive(value):
            messages.append(_error("hookpost.E015", f"HOOKPOST[{name!r}] is {value!r}."))
    lease, total = hookpost_settings.LEASE_SECONDS, hookpost_settings.TOTAL_TIMEOUT
    if _positive(lease) and _positive(total) and lease <= total:
        messages.append(
            Warning(
                "HOOKPOST['LEASE_SECONDS'] is not longer than TOTAL_TIMEOUT: a slow request "
                "could outlive its lease and be sent twice.",
                hint="Make the lease comfortably longer than the total timeout.",
                id="hookpost.W002",
            )
        )
    schedule = hookpost_settings.RETRY_SCHEDULE
    jitter = hookpost_settings.RETRY_JITTER
    try:
        if schedule is not None:
            RetryPolicy.from_config(schedule)
        RetryPolicy(jitter=jitter)
    except (TypeError, ValueError) as exc:
        messages.append(_error("hookpost.E016", f"HOOKPOST['RETRY_SCHEDULE'] / ['RETRY_JITTER']: {exc}"))
    runner = hookpost_settings.RUNNER
    if runner not in ("worker", "celery"):
        messages.append(_error("hookpost.E017", f"HOOKPOST['RUNNER'] is {runner!r}."))
    return messages


def _check_encryption() -> list[CheckMessage]:
    """Validate the keys that seal secrets at rest; warn when they come from SECRET_KEY."""
    messages: list[CheckMessage] = []
    grace = hookpost_settings.SECRET_ROTATION_GRACE
    if isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0:
        messages.append(_error("hookpost.E021", f"HOOKPOST['SECRET_ROTATION_GRACE'] is {grace!r}."))
    keys = hookpost_settings.ENCRYPTION_KEYS
    if isinstance(keys, str) or not isinstance(keys, list | tuple):
        return [*messages, _error("hookpost.E020", "HOOKPOST['ENCRYPTION_KEYS'] must be a list.")]
    for index, key in enumerate(keys):
        try:
            Fernet(key)
        except (TypeError, ValueError):
            # Never echo the value: it is a key.
            message = f"HOOKPOST['ENCRYPTION_KEYS'][{index}] is not a Fernet key."
            messages.append(_error("hookpost.E020", message))
    if not keys:
        messages.append(
            Warning(
                "Secrets at rest are sealed with a key derived from SECRET_KEY: rotating "
                "SECRET_KEY without keeping the old one in SECRET_KEY_FALLBACKS makes them unreadable.",
                hint="Set HOOKPOST['ENCRYPTION_KEYS'] = [<hookpost.crypto.generate_key()>] from your "
                "secret store, then run manage.py hookpost_reencrypt.",
                id="hookpost.W003",
            )
        )
    return messages


_SOURCE_NAME = re.compile(r"[-a-zA-Z0-9_]+")


def _check_receiver() -> list[CheckMessage]:
    """Validate the receiving side's settings: every declared source must resolve."""
    messages: list[CheckMessage] = []
    mode = hookpost_settings.RECEIVER_MODE
    if mode not in MODES:
        messages.append(_error("hookpost.E019", f"HOOKPOST['RECEIVER_MODE'] is {mode!r}."))
    limit = hookpost_settings.RECEIVER_MAX_BODY_BYTES
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        messages.append(_error("hookpost.E015", f"HOOKPOST['RECEIVER_MAX_BODY_BYTES'] is {limit!r}."))
    schedule = hookpost_settings.RECEIVER_RETRY_SCHEDULE
    try:
        if schedule is not None:
            RetryPolicy.from_config(schedule)
    except (TypeError, ValueError) as exc:
        messages.append(_error("hookpost.E016", f"HOOKPOST['RECEIVER_RETRY_SCHEDULE']: {exc}"))
    declared = hookpost_settings.RECEIVER_SOURCES
    if not isinstance(declared, dict):
        return [*messages, _error("hookpost.E018", f"HOOKPOST['RECEIVER_SOURCES'] is {declared!r}.")]
    if messages:
        # Sources fall back on these settings: their own problems would only repeat them.
        return messages
    for name, options in declared.items():
        where = f"HOOKPOST['RECEIVER_SOURCES'][{name!r}]"
        if not isinstance(name, str) or not _SOURCE_NAME.fullmatch(name):
            messages.append(_error("hookpost.E018", f"{where}: the name cannot appear in a URL."))
        elif not isinstance(options, dict):
            messages.append(_error("hookpost.E018", f"{where} must be a dict of options."))
        else:
            try:
                build(name, options)
            except (TypeError, ValueError) as exc:
                messages.append(_error("hookpost.E018", f"{where}: {exc}."))
    return messages


def _check_models(declared: object) -> list[CheckMessage]:
    if not isinstance(declared, dict):
        return [_error("hookpost.E007", f"HOOKPOST['MODELS'] must be a dict, got {declared!r}.")]
    messages: list[CheckMessage] = []
    for label, options in declared.items():
        if not isinstance(options, dict):
            messages.append(
                _error("hookpost.E007", f"HOOKPOST['MODELS'][{label!r}] must be a dict of options.")
            )
            continue
        unknown = set(options) - MODEL_OPTIONS
        if unknown:
            messages.append(
                _error(
                    "hookpost.E007",
                    f"HOOKPOST['MODELS'][{label!r}] has unknown options {sorted(unknown)}; "
                    f"known: {sorted(MODEL_OPTIONS)}.",
                )
            )
        try:
            apps.get_model(label)
        except (LookupError, ValueError, TypeError):
            messages.append(
                _error(
                    "hookpost.E001", f"HOOKPOST['MODELS'] names {label!r}, which is not an installed model."
                )
            )
    for model, options in settings_registrations():
        serializer = options["serializer"]
        if isinstance(serializer, str):
            messages.append(
                _error(
                    "hookpost.E003",
                    f"{model._meta.label}: cannot import serializer {serializer!r}.",
                    obj=model,
                )
            )
            options = {**options, "serializer": None}
        options.pop("include_raw", None)
        for check_id, message in model_spec_problems(model, **options):
            messages.append(_error(check_id, message, obj=model))
    return messages
