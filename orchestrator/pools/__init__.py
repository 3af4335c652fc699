"""Pool backends, one module each, registered by pool type (see `base.PoolBackend`).

`local` (worker processes), `delegated` (bridges to a remote MCP server), `arq` (bridges to
an arq fleet) and `kubernetes` (Deployments of worker pods) exist; a pool of an unregistered
type fails at spawn with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from orchestrator.pools.arq import ArqBackend
from orchestrator.pools.base import PoolBackend, Sweep
from orchestrator.pools.delegated import DelegatedBackend
from orchestrator.pools.kubernetes import KubernetesBackend
from orchestrator.pools.local import LocalBackend
from shared.config import Settings
from shared.models import PoolType

BackendFactory = Callable[[Settings, Path, str, Callable[[], None]], PoolBackend]
"""(settings, log folder, orchestrator id, a callback that asks for a supervision tick)."""

BACKENDS: dict[PoolType, BackendFactory] = {
    PoolType.LOCAL: LocalBackend,
    PoolType.ARQ: ArqBackend,
    PoolType.DELEGATED: DelegatedBackend,
    PoolType.KUBERNETES: KubernetesBackend,
}


def build_backends(
    settings: Settings, log_dir: Path, owner_id: str, wake: Callable[[], None]
) -> dict[PoolType, PoolBackend]:
    """One backend of each registered type for one orchestrator."""
    return {kind: make(settings, log_dir, owner_id, wake) for kind, make in BACKENDS.items()}


def unavailable(pool_type: PoolType) -> str:
    """Why a pool of an unregistered type cannot start."""
    return (
        f"pool type {pool_type!s} is not available yet in this version; "
        "use 'local' (alias 'mahavishnu')"
    )


__all__ = ["BACKENDS", "PoolBackend", "Sweep", "build_backends", "unavailable"]
