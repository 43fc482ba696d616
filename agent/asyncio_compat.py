"""Lighter asyncio primitives for thousands of agents on one loop (CPython 3.11-3.13 internals).

An idle agent holds a message queue and an event; their waiter deques (~600 bytes each) were a
measurable share of a simulated device's memory. These subclasses replace the deques with
shared placeholders until someone waits. They touch private attributes of asyncio.Queue
(`_putters`, `_finished`) and asyncio.Event (`_waiters`, `_value`); where a Python release has
renamed them, the stock classes are used instead (same behaviour, more memory), so a new
Python on a device never stops the agent.
"""

from __future__ import annotations

import asyncio
import collections


class _NoJoin:
    """Stands in for asyncio.Queue's join() event on a queue nobody joins."""

    __slots__ = ()

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass


_NO_JOIN = _NoJoin()


class LightQueue(asyncio.Queue):  # type: ignore[type-arg]
    """An unbounded, never-joined queue without put waiters or join()'s event."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        if maxsize <= 0:
            self._putters = ()
            self._finished = _NO_JOIN

    async def join(self) -> None:
        raise NotImplementedError("nobody joins an agent's message queue")


class LightEvent(asyncio.Event):
    """asyncio.Event that makes its waiter deque only when someone waits."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters = ()  # type: ignore[assignment]

    async def wait(self) -> bool:
        if not self._value and not isinstance(self._waiters, collections.deque):
            self._waiters = collections.deque()
        return await super().wait()


def _internals_present() -> bool:
    queue, event = asyncio.Queue(), asyncio.Event()
    return all(hasattr(queue, a) for a in ("_putters", "_finished")) and all(
        hasattr(event, a) for a in ("_waiters", "_value"))


if not _internals_present():  # a Python whose asyncio changed: behave, at a cost in memory
    LightQueue = asyncio.Queue  # type: ignore[misc, assignment]
    LightEvent = asyncio.Event  # type: ignore[misc, assignment]
