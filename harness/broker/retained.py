"""Which retained messages the broker keeps for devices, and how many.

amqtt keeps every retained PUBLISH, of any size, until a restart: one device publishing ten
10 MiB retained messages on its own topics grew the broker by ~100 MB for good. Here a retained
message is kept only on the device topics where a late subscriber needs the last value (a
device's status: its birth, or its last will saying it went offline), and each device holds at
most a few of them, of bounded size. Everything else a device publishes is an event or a reply
that only matters when it is sent; on those the retain flag is ignored (the message is still
delivered).
"""

from __future__ import annotations

from agent import wire

#: Device topic suffixes on which a retained message is kept.
RETAINED_SUFFIXES = frozenset({wire.STATUS})


class RetainedLedger:
    """The retained messages each device holds (topic -> bytes), to refuse what exceeds its share."""

    def __init__(self, per_device: int, bytes_per_device: int) -> None:
        self.per_device = per_device
        self.bytes_per_device = bytes_per_device
        self._by_owner: dict[str, dict[str, int]] = {}

    @staticmethod
    def topic_refusal(topic: str) -> str | None:
        """Why no retained message is kept on `topic`, or None if one may be."""
        try:
            _, suffix = wire.split_topic(topic)
        except wire.WireError:
            return "it is not a device topic"
        if suffix not in RETAINED_SUFFIXES:
            return f"retained messages are kept only on {', '.join(sorted(RETAINED_SUFFIXES))}"
        return None

    def refusal(self, topic: str, size: int) -> str | None:
        """Why a retained message of `size` bytes on `topic` is not stored, or None if it is."""
        reason = self.topic_refusal(topic)
        if reason is not None:
            return reason
        owner, _ = wire.split_topic(topic)
        held = self._by_owner.get(owner, {})
        if topic not in held and len(held) >= self.per_device:
            return f"the device holds {len(held)} retained messages already (at most {self.per_device})"
        total = sum(held.values()) - held.get(topic, 0) + size
        if total > self.bytes_per_device:
            return f"the device's retained messages would take {total} bytes (at most {self.bytes_per_device})"
        return None

    def stored(self, topic: str, size: int) -> None:
        owner, _ = wire.split_topic(topic)
        self._by_owner.setdefault(owner, {})[topic] = size

    def cleared(self, topic: str) -> None:
        try:
            owner, _ = wire.split_topic(topic)
        except wire.WireError:
            return
        held = self._by_owner.get(owner)
        if held is not None:
            held.pop(topic, None)
            if not held:
                del self._by_owner[owner]

    def held(self, owner: str) -> int:
        """Bytes of retained messages `owner` holds."""
        return sum(self._by_owner.get(owner, {}).values())
