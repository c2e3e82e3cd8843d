"""Which Redis topology FLOWPROOF_REDIS_URL names: one server, a primary found through Sentinel,
or a Redis Cluster.

- `redis://` / `rediss://`: one server (a primary, with or without replicas).
- `redis+sentinel://[user:password@]host:port[,host:port...]/<primary name>[/<db>]`: the Sentinels
  to ask where the primary named `<primary name>` (Sentinel's `monitor` name) is. Every client
  asks them again whenever its connection breaks or the server says it is now a replica
  (`READONLY`), so after a failover the relay, the consumers and the verifier follow the promoted
  replica. The user and password are the data nodes' (the Sentinels are asked without them).
- `redis+cluster://[user:password@]host:port[,host:port...]`: some nodes of a Redis Cluster (any
  of them will do; the client learns the others and the hash slots from them). Streams spread
  over the primaries by the hash slot of their names; a cluster has only database 0.
- `rediss+sentinel://` and `rediss+cluster://`: the same over TLS, to every server (the Sentinels
  and the data nodes, or every Cluster node), each certificate and host name verified against
  FLOWPROOF_REDIS_SSL_CAFILE (or the system's CAs), as with `rediss://`.

Sentinel rather than a scripted `REPLICAOF NO ONE`: redis-py's asyncio client ships a
Sentinel-managed connection pool (`redis.asyncio.sentinel`) that looks the primary up on every
new connection and drops a connection to a demoted primary; a scripted promotion would need
flowproof to find the new primary itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
TLS_SCHEMES = ("rediss", "rediss+sentinel", "rediss+cluster")
SCHEMES = ("redis", "rediss", *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """A `redis+sentinel://` URL taken apart."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None
    tls: bool  # rediss+sentinel://: TLS to the Sentinels and to the data nodes


@dataclass(frozen=True, slots=True)
class ClusterTarget:
    """A `redis+cluster://` (or `rediss+cluster://`) URL taken apart."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool  # rediss+cluster://: TLS to every node


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def is_sentinel_url(url: str) -> bool:
    return _scheme(url) in SENTINEL_SCHEMES


def is_cluster_url(url: str) -> bool:
    return _scheme(url) in CLUSTER_SCHEMES


def uses_tls(url: str) -> bool:
    """Whether FLOWPROOF_REDIS_URL asks for TLS (`rediss://`, `rediss+sentinel://`,
    `rediss+cluster://`)."""
    return _scheme(url) in TLS_SCHEMES


def _split(
    url: str, schemes: tuple[str, str]
) -> tuple[list[tuple[str, int]], str, str | None, str | None]:
    """(host:port list, path, username, password) of a multi-host URL of one of `schemes`."""
    found, sep, rest = url.partition("://")
    scheme = found.lower()
    if not sep or scheme not in schemes:
        raise ValueError(f"is not a {schemes[0]}:// URL")
    if "?" in rest or "#" in rest:
        raise ValueError(f"a {scheme}:// URL takes no query or fragment")
    authority, _, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not at:
        hosts, userinfo = authority, ""
    if not hosts:
        raise ValueError(f"a {scheme}:// URL needs at least one host:port")
    addresses = [_host_port(item) for item in hosts.split(",") if item.strip()]
    username, password = None, None
    if userinfo:
        name, colon, secret = userinfo.partition(":")
        username = unquote(name) or None
        password = unquote(secret) if colon else None
    return addresses, path, username, password


def parse_cluster_url(url: str) -> ClusterTarget:
    """The parts of a `redis+cluster://` URL; ValueError saying what is wrong."""
    nodes, path, username, password = _split(url, CLUSTER_SCHEMES)
    if path.strip("/") not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, not /{path.strip('/')}")
    return ClusterTarget(tuple(nodes), username, password, uses_tls(url))


def _host_port(item: str) -> tuple[str, int]:
    host, sep, port = item.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{item.strip()!r} is not host:port")
    return host.strip("[]"), int(port)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The parts of a `redis+sentinel://` URL; ValueError saying what is wrong (never the
    password)."""
    sentinels, path, username, password = _split(url, SENTINEL_SCHEMES)
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise ValueError(
            f"a {_scheme(url)}:// URL ends with /<primary name> or /<primary name>/<db>"
        )
    if len(parts) == 2 and not parts[1].isdigit():
        raise ValueError(f"database {parts[1]!r} is not a number")
    return SentinelTarget(
        sentinels=tuple(sentinels),
        service=unquote(parts[0]),
        db=int(parts[1]) if len(parts) == 2 else 0,
        username=username,
        password=password,
        tls=uses_tls(url),
    )


def check_redis_url(url: str) -> None:
    """ValueError naming what is wrong with FLOWPROOF_REDIS_URL's topology, else None."""
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise ValueError(
            "must be a redis://, rediss://, redis[s]+sentinel://host:port[,host:port]/<primary> "
            "or redis[s]+cluster://host:port[,host:port] URL"
        )
    if scheme in SENTINEL_SCHEMES:
        parse_sentinel_url(url)
    if scheme in CLUSTER_SCHEMES:
        parse_cluster_url(url)
