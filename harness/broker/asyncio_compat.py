"""The one asyncio internal a process holding thousands of TLS connections changes.

asyncio's TLS transport (asyncio.sslproto.SSLProtocol, the implementation CPython 3.11 took
from uvloop) reads each connection into a buffer of `SSLProtocol.max_size` bytes, 256 KiB
zero-filled at connect: most of amqtt's ~330 KiB per TLS connection, and a tenth of the broker's
CPU per connect. 32 KiB holds any record TLS sends (16 KiB plus overhead) twice over.

That attribute is private, so this module is written for one Python minor version and refuses
to load under another (the attribute may be gone or mean something else there).
"""

from __future__ import annotations

import asyncio.sslproto
import sys

#: The Python minor version whose asyncio.sslproto this module was written against.
SUPPORTED_PYTHON = (3, 11)

if sys.version_info[:2] != SUPPORTED_PYTHON:
    raise ImportError(
        f"harness/broker/asyncio_compat.py changes asyncio.sslproto of Python "
        f"{SUPPORTED_PYTHON[0]}.{SUPPORTED_PYTHON[1]} only; this is Python "
        f"{sys.version_info[0]}.{sys.version_info[1]}: run with Python {SUPPORTED_PYTHON[0]}.{SUPPORTED_PYTHON[1]}, "
        "or check SSLProtocol.max_size in this version's sslproto and add it to SUPPORTED_PYTHON"
    )

#: asyncio's TLS read buffer per connection (its default is 256 KiB).
TLS_READ_BUFFER = 32 * 1024


def shrink_tls_read_buffer(size: int = TLS_READ_BUFFER) -> None:
    """Read TLS connections into `size`-byte buffers; only ever lowers the size."""
    if asyncio.sslproto.SSLProtocol.max_size > size:
        asyncio.sslproto.SSLProtocol.max_size = size
