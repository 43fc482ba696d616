"""The agent's Hardware interface on a real Linux system (a board, a PC, a QEMU guest).

One module per capability: facts and resources from /proc, /sys, DMI and the device tree
(sysinfo), the package manager (apt, dpkg, mender), the container runtime (the docker CLI),
power (systemctl or reboot/poweroff, or a command the operator configures). A capability the
device lacks answers each command with status 400 and a sentence saying what is missing, never
a traceback; read-only listings the agent makes on its own (telemetry) come back empty.
"""

from agent.linux.hardware import LinuxHardware

__all__ = ["LinuxHardware"]
