"""The fleetrig device agent.

It runs unchanged on simulated devices, QEMU guests and real boards, so it imports only the
standard library, aiomqtt/paho-mqtt and cryptography: never the platform, harness or simulators.
"""
