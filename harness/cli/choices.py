"""The closed value sets of CLI options, as Literal types typer turns into choices.

An option with a closed set refuses an unknown value at once (exit 2, naming the choices),
instead of reaching the platform or a device as a filter that matches nothing or a command that
fails later. The sets are the platform's and the agent's own; they are spelled out here because
importing their modules (the registry models, the manifest builder with its XML schema) would
cost the CLI a third of a second at every start. tests/test_cli_conventions.py checks that each
set equals its source.
"""

from __future__ import annotations

from typing import Literal

#: harness.platform.models: device states a device can be listed by (disposed devices are gone).
DeviceState = Literal["provisioned", "registered", "claimed", "decommissioned"]
#: agent.wire.AUTH_MODES
AuthMode = Literal["x509", "token"]
#: harness.platform.tracking.CVE_STATES
CveStatus = Literal["open", "mitigated", "fixed", "not-affected"]
#: simulators.families.FAMILY_NAMES
Family = Literal["imx", "photon", "x86"]
#: agent.rpc_forms: the AOTA form's apps and commands, SOTA commands and modes, query options.
AotaApp = Literal["docker", "compose", "application", "btrfs"]
AotaCommand = Literal["up", "down", "pull", "list", "remove", "import", "load", "stats", "update"]
SotaCommand = Literal["update", "upgrade"]
SotaMode = Literal["full", "no-download", "download-only", "cancel"]
QueryOption = Literal["all", "hw", "fw", "os", "status", "version", "security", "guid", "swbom"]
YesNo = Literal["Y", "N"]
#: The manifest schema's sigversion (upstream manifest_schema.xsd): SHA-256 or SHA-384.
SigVersion = Literal["256", "384"]
#: sim device --until
Until = Literal["registered"]
