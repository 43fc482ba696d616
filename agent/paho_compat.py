"""The agent's overrides of paho-mqtt internals, for paho-mqtt 2.2.0 only (pinned in pyproject.toml).

* `plain_connect`: paho binds every socket to ("", 0) before it connects, and a bind to port 0
  makes the kernel search the ephemeral ports for one that no socket (TIME_WAIT ones included)
  is bound to: with the thousands a fleet leaves behind, ~1-2 ms of kernel time per connect. A
  plain connect picks its port without that search. Replaces the private
  `_create_socket_connection`, and reads the private `_connect_timeout`.
* `outside_callbacks`: paho's own rule for writing at once (not from inside one of its
  callbacks) reads the private `_in_callback_mutex`.
* `DeviceTlsContext`: what paho uses of an SSLContext (`wrap_socket`, `check_hostname`), so one
  shared context serves many device certificates.
"""

from __future__ import annotations

import functools
import socket
import ssl
import threading
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt import __version__ as _paho_version

from agent.compat_guard import require

SUPPORTED = "2.2.0"
require("paho-mqtt", SUPPORTED, _paho_version)

#: Re-exported so that the agent's other modules need not import paho themselves.
MQTT_ERR_SUCCESS = paho.MQTT_ERR_SUCCESS
Client = paho.Client


def plain_connect(mqtt: paho.Client, host: str, port: int) -> None:
    """Make `mqtt` connect without binding first (only when no bind address or port is asked for)."""
    mqtt._create_socket_connection = functools.partial(  # type: ignore[method-assign]
        socket.create_connection, (host, port), timeout=mqtt._connect_timeout
    )


def outside_callbacks(mqtt: paho.Client) -> bool:
    """True when no paho callback is running, so a write now cannot re-enter paho."""
    if mqtt._in_callback_mutex.acquire(False):
        mqtt._in_callback_mutex.release()
        return True
    return False


class DeviceTlsContext:
    """What paho needs of an SSLContext (`wrap_socket`, `check_hostname`) for one device.

    `wrap_socket` loads the device's certificate chain into the shared context and wraps the
    socket while holding the lock, so each connection carries its own device's certificate.
    OpenSSL gives the new connection its own reference to that certificate and key (SSL_new
    copies them), so the next device's load does not touch it. paho calls it from aiomqtt's
    connect thread, off the event loop.
    """

    __slots__ = ("_certfile", "_keyfile", "_lock", "_shared")

    def __init__(self, shared: ssl.SSLContext, lock: threading.Lock, certfile: str, keyfile: str) -> None:
        self._shared = shared
        self._lock = lock
        self._certfile = certfile
        self._keyfile = keyfile

    @property
    def check_hostname(self) -> bool:
        return self._shared.check_hostname

    def wrap_socket(self, sock: Any, **kwargs: Any) -> ssl.SSLSocket:
        with self._lock:
            self._shared.load_cert_chain(self._certfile, self._keyfile)
            return self._shared.wrap_socket(sock, **kwargs)
