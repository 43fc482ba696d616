"""What the broker allows one connection, and the counters of what it refused.

One place for every bound the broker enforces against a misbehaving or hostile device, so a
deployment (or a test) can tighten them in one object, and an operator can read in `BrokerStats`
what was refused without grepping the log.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent import wire


@dataclass(frozen=True)
class BrokerLimits:
    #: Largest packet (remaining length) read from a client; a bigger one closes the connection
    #: before its body is read. The wire contract's limit, shared with the agent.
    max_packet_bytes: int = wire.MAX_PACKET_BYTES
    #: Seconds a connection may take from TCP accept to a complete CONNECT (the TLS handshake
    #: included); after that it is closed.
    connect_timeout: float = 10.0
    #: A session silent for this many times its keepalive is closed, as MQTT 3.1.1 (3.1.2.10) says.
    keepalive_grace: float = 1.5
    #: Seconds between two sweeps over the connections' last-activity stamps (see FleetBroker.sweep).
    sweep_interval: float = 1.0
    #: Retained messages one device may hold in the broker, and their bytes in all (a status is
    #: well under 2 KiB; at 8 KiB, 10,000 devices hold at most 80 MB).
    retained_per_device: int = 4
    retained_bytes_per_device: int = 8 * 1024
    #: QoS 2 messages one connection may have between PUBREC and PUBREL; amqtt keeps each one in
    #: memory until its PUBREL, which a hostile client never sends.
    max_inflight_qos2: int = 16


@dataclass
class BrokerStats:
    """What the broker refused since it started."""

    #: CONNECTs refused for a last will outside the device's publish rights.
    wills_refused: int = 0
    #: PUBLISHes (and wills, at the time they fire) dropped by the topic ACL.
    publishes_refused: int = 0
    #: Retained messages not stored (topic that keeps none, or the device's cap reached).
    retained_refused: int = 0
    #: Connections closed for a packet over max_packet_bytes.
    oversized_packets: int = 0
    #: Connections closed for a packet that does not decode, or breaks the protocol.
    malformed_packets: int = 0
    #: Sessions closed for silence beyond keepalive_grace x keepalive.
    keepalive_expired: int = 0
    #: Connections closed for no CONNECT within connect_timeout.
    connect_timeouts: int = 0
    #: Last wills published (connection lost without DISCONNECT).
    wills_published: int = 0
