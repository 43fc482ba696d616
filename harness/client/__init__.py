"""The operator library over REST; it imports nothing of the server, so it loads in a blink."""

from harness.client.rest import Client

__all__ = ["Client"]
