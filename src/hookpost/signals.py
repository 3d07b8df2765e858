"""Django signals hookpost sends, for application code to subscribe to."""

from __future__ import annotations

from django.dispatch import Signal

#: Sent when capture could not encode a payload and stored the event as invalid.
#: kwargs: ``event_type`` (str), ``error`` (str), ``using`` (str).
payload_invalid = Signal()

#: Events were written on connection ``using``, inside whatever transaction is open there (not yet
#: committed). Sender: the ``Event`` model. kwargs: ``using`` (str). Runners wake up on it.
events_recorded = Signal()

#: Received webhooks were stored for the worker to handle (sources in "worker" mode) on
#: connection ``using``, inside whatever transaction is open there. Sender: the
#: ``InboundWebhook`` model. kwargs: ``using`` (str). Runners wake up on it.
webhooks_stored = Signal()

#: An attempt got a 2xx. kwargs: ``delivery_id``, ``endpoint_id``, ``event_id``, ``attempt``.
delivery_succeeded = Signal()

#: An attempt failed (it will be retried, or it was the last). Same kwargs, plus
#: ``status_code`` (int or None), ``error`` (str) and ``verdict`` (str).
delivery_failed = Signal()

#: A delivery used up its attempts and is dead. Same kwargs as ``delivery_succeeded``.
delivery_exhausted = Signal()

#: An endpoint was disabled by hookpost. kwargs: ``endpoint_id``, ``reason``.
endpoint_disabled = Signal()

#: An endpoint whose circuit was open answered with a 2xx again. kwargs: ``endpoint_id``.
endpoint_recovered = Signal()

#: A verified webhook is to be handled (hookpost.receiver). Sender: the ``InboundWebhook``
#: model. kwargs: ``source`` (str), ``event_type`` (str, "" when the payload has no ``type``),
#: ``payload`` (the decoded JSON body), ``webhook`` (the ``InboundWebhook`` row: id, headers,
#: attempts…). A receiver that raises fails the whole handling: every handler's database work
#: is rolled back together and the row is marked failed (and retried, depending on the mode).
webhook_received = Signal()
