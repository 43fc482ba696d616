"""The version guard the *_compat modules share: a private override is tied to one release.

A compat module reaches into a library's private attributes, which change without notice
between releases, so it refuses to load against any release but the one it was written and
tested for (pinned exactly in pyproject.toml). The version comes from the installed
distribution's metadata; a bundle that carries no dist-info falls back to the module's
`__version__`.
"""

from __future__ import annotations

import importlib.metadata


class UnsupportedVersion(ImportError):
    """A library is installed in a release the agent's overrides were not written for."""


def installed_version(distribution: str, module_version: str | None) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return module_version


def require(distribution: str, supported: str, module_version: str | None) -> None:
    """Raise UnsupportedVersion unless `distribution` is exactly `supported`."""
    found = installed_version(distribution, module_version)
    if found != supported:
        raise UnsupportedVersion(
            f"the fleetrig agent overrides internals of {distribution} {supported} and refuses "
            f"{distribution} {found or '(version unknown)'}: run pip install '{distribution}=={supported}'"
        )
