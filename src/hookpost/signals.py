"""Django signals hookpost sends, for application code to subscribe to."""

from __future__ import annotations

from django.dispatch import Signal

#: Sent when capture could not encode a payload and stored the event as invalid.
#: kwargs: ``event_type`` (str), ``error`` (str), ``using`` (str).
payload_invalid = Signal()
