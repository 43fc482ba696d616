"""The built-in MQTT broker (amqtt) with the registry's authentication, the device topic ACL,
and the bounds that keep one hostile device from hurting the others.

server.py is the broker (FleetBroker) and its policy; plugins.py the amqtt plugins (auth, ACL,
the platform's hooks); authenticator.py what the broker asks of the credentials' owner;
limits.py and retained.py the bounds; amqtt_compat.py and asyncio_compat.py every override of
those libraries' internals; tuning.py the process-wide settings entry points apply. Nothing here
imports the platform.
"""
