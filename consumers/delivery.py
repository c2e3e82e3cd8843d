"""A message as a sink handed it over, before any decoding: what every later step starts from."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

# Kafka header or Redis field names with their raw values; Redis names are decoded with
# surrogateescape so that any bytes round-trip into the dead-letter copy.
Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery of one message: the same message delivered again is another Delivery."""

    source: str  # stream or topic
    position: str  # Redis entry id, or "<partition>:<offset>"
    headers: Headers  # the envelope fields (Redis: every field but `payload`)
    value: bytes | None  # the framed Avro bytes (Redis `payload` field, Kafka value)
    received_at: dt.datetime
    delivery_count: int = 1  # Redis: from XPENDING; Kafka: always 1 (redeliveries are not told)
    key: bytes | None = None  # Kafka only

    @property
    def size(self) -> int:
        """Bytes on the wire: value, key, and header names and values."""
        headers = sum(len(name) + len(value or b"") for name, value in self.headers)
        return len(self.value or b"") + len(self.key or b"") + headers

    def header(self, name: str) -> bytes | None:
        """The first header of `name`, as Kafka clients read duplicates."""
        return next((value for key, value in self.headers if key == name), None)
