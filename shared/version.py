"""The installed version of the package (`mahavishnu --version`, the MCP server's info)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

PACKAGE = "mahavishnu-pools"


def package_version() -> str:
    """The installed distribution's version, or 0.0.0 when run from a tree not installed."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "0.0.0"
