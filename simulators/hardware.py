"""Modelled hardware behind the agent's Hardware interface, for simulated devices."""

from __future__ import annotations

from typing import Any

from simulators.families import Family, family, initial_firmware, static_facts


class SimulatedHardware:
    """A device of one family: fixed facts from its serial, and a firmware slot."""

    def __init__(self, family_name: str, serial: str, firmware: str | None = None) -> None:
        self.family: Family = family(family_name)
        self.serial = serial
        self._facts = static_facts(self.family, serial)
        self.firmware = firmware or initial_firmware(self.family, serial)

    def facts(self) -> dict[str, Any]:
        return dict(self._facts)

    def firmware_version(self) -> str:
        return self.firmware
