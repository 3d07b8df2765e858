"""System checks for the ``HOOKPOST`` setting, each problem with a stable id (``hookpost.E001``…)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig, apps
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from hookpost.conf import DEFAULTS, hookpost_settings
from hookpost.events import model_spec_problems
from hookpost.registry import MODEL_OPTIONS, settings_registrations

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
