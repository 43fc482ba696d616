"""The agent's MQTT client: aiomqtt's Client with the costs of many clients in one process
taken out. Written against aiomqtt 2.5.1 only (pinned in pyproject.toml): it overrides the
private `_on_socket_register_write` and `_misc_loop` and reads `_client`, `_queue`,
`_disconnected`, `_misc_task`, `_keepalive`, `_hostname`, `_port`, `_bind_address`,
`_bind_port`.

* paho binds before it connects (see paho_compat.plain_connect).
* aiomqtt wakes every client once a second for paho's keepalive check; with thousands of
  devices on one loop that is thousands of wake-ups a second for a ping due once a minute.
  A quarter keepalive (1-15 s) still sends the ping before 1.25 keepalives, within the 1.5
  the broker allows [MQTT-3.1.2-24].
* a packet is written as soon as it is queued when that happens on the loop's thread
  (aiomqtt registers a writer for each one: a self-pipe write, two epoll changes and a
  loop iteration per packet);
* `next_message()` reads the queue directly (`messages` makes a task and an asyncio.wait
  per message, and keeps one of each per idle client): the end of the connection is a
  marker in the queue.
* `release()` drops paho after the session: aiomqtt and paho reference each other (paho's
  callbacks are aiomqtt's bound methods), so a closed client otherwise waits for the
  cyclic garbage collector, and a fleet closes one per first boot.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any

import aiomqtt

from agent import paho_compat
from agent.asyncio_compat import LightQueue
from agent.compat_guard import require

SUPPORTED = "2.5.1"
require("aiomqtt", SUPPORTED, getattr(aiomqtt, "__version__", None))

from aiomqtt.exceptions import MqttConnectError  # noqa: E402 - only once the release is known

__all__ = ["SUPPORTED", "Client", "MqttConnectError"]

#: Put in a client's message queue when its connection is gone: wakes the reader.
_GONE = object()


def _wake_reader(queue: asyncio.Queue, _future: asyncio.Future) -> None:  # type: ignore[type-arg]
    queue.put_nowait(_GONE)


class Client(aiomqtt.Client):
    """aiomqtt.Client for one device among thousands on a loop (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("queue_type", LightQueue)
        super().__init__(*args, **kwargs)
        self._loop_thread = threading.get_ident()
        if not self._bind_address and not self._bind_port:
            paho_compat.plain_connect(self._client, self._hostname, self._port)

    async def __aenter__(self) -> Client:
        await super().__aenter__()
        self._disconnected.add_done_callback(functools.partial(_wake_reader, self._queue))
        return self

    def _on_socket_register_write(self, client: paho_compat.Client, userdata: Any, sock: Any) -> None:
        # On the loop's own thread, outside paho's callbacks, write now; register the writer
        # only for what the socket did not take.
        if threading.get_ident() == self._loop_thread and paho_compat.outside_callbacks(client):
            try:
                client.loop_write()
            except Exception as exc:  # as aiomqtt's writer callback: the connection is broken
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)
                return
            if not client.want_write():
                return
        super()._on_socket_register_write(client, userdata, sock)

    async def next_message(self) -> aiomqtt.Message:
        """The next message; MqttError once the connection is gone and the queue is empty."""
        message = await self._queue.get()
        if message is _GONE:
            self._queue.put_nowait(_GONE)  # every later call fails the same way
            raise aiomqtt.MqttError("Disconnected during message iteration") from self._disconnected.exception()
        return message

    def release(self) -> None:
        task, self._misc_task = self._misc_task, None
        if task is not None and not task.done():
            task.cancel()
        self._client = None  # type: ignore[assignment]

    async def _misc_loop(self) -> None:
        interval = min(max(self._keepalive / 4, 1.0), 15.0)
        while (mqtt := self._client) is not None and mqtt.loop_misc() == paho_compat.MQTT_ERR_SUCCESS:
            await asyncio.sleep(interval)
