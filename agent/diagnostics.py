"""Diagnostics before and after an update: storage, memory, battery, mandatory software.

The thresholds come from the live configuration (minStorageMB, minMemoryMB, minPowerPercent,
sotaSW), so an operator can tighten or relax them with a config command.
"""

from __future__ import annotations

from agent.config import AgentConfig
from agent.hardware import Hardware, HardwareError
from agent.wire import ResultCode


def check(hardware: Hardware, config: AgentConfig, when: str) -> None:
    """Raise HardwareError(COMMAND_FAILURE) naming every check that failed; `when` is 'pre' or 'post'."""
    reading = hardware.resources()
    failures = []
    if reading.free_storage_mb < config.int("minStorageMB"):
        failures.append(f"storage {reading.free_storage_mb} MB free, below {config.int('minStorageMB')} MB")
    if reading.free_memory_mb < config.int("minMemoryMB"):
        failures.append(f"memory {reading.free_memory_mb} MB free, below {config.int('minMemoryMB')} MB")
    if reading.battery_percent is not None and reading.battery_percent < config.int("minPowerPercent"):
        failures.append(f"battery at {reading.battery_percent}%, below {config.int('minPowerPercent')}%")
    missing = sorted(set(config.list("sotaSW")) - hardware.installed_software())
    if missing:
        failures.append(f"mandatory software missing: {', '.join(missing)}")
    if failures:
        raise HardwareError(ResultCode.COMMAND_FAILURE, f"{when}-update diagnostics failed: " + "; ".join(failures))
