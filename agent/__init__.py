"""The fleetrig device agent.

It runs unchanged on simulated devices, QEMU guests and real boards (`python -m agent`, or the
zipapp `fleetrig agent bundle` builds), so it imports only the standard library, cryptography
(Debian's python3-cryptography on a device) and the pure-Python wheels its bundle carries:
aiomqtt, paho-mqtt, defusedxml, xmlschema. Never the platform, the harness or the simulators.
"""
