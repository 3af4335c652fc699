"""A synchronous Redis client for a test URL, standalone or `redis+cluster://`: for functions
that worker processes run in tests (they count their runs in Redis)."""

from __future__ import annotations

from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from shared.config import parse_cluster_url
from shared.connection import is_cluster_url


def sync_client(url: str) -> Any:
    """`redis.Redis` for a plain URL, `redis.cluster.RedisCluster` for a cluster URL."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(url)
    parsed = parse_cluster_url(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in parsed.nodes],
        username=parsed.username,
        password=parsed.password,
    )
