"""Which consumer groups the verifier expects in which sink."""

from __future__ import annotations

from flowproof.core.config import Settings, Sink
from flowproof.core.errors import ConfigError

SinkGroup = tuple[Sink, str]


def expected_groups(settings: Settings) -> list[SinkGroup]:
    """FLOWPROOF_VERIFY_GROUPS, or FLOWPROOF_CONSUMER_GROUP in every enabled sink."""
    if not settings.verify_groups:
        return [(sink, settings.consumer_group) for sink in settings.sinks]
    pairs: list[SinkGroup] = []
    for pair in settings.verify_groups:
        name, _, group = pair.partition(":")
        enabled = [sink for sink in settings.sinks if sink == name]
        if not enabled:
            raise ConfigError(
                f"FLOWPROOF_VERIFY_GROUPS names {pair!r}, but FLOWPROOF_SINKS does not enable "
                f"{name} (enabled: {','.join(settings.sinks)})"
            )
        pairs.append((enabled[0], group))
    missing = [s for s in settings.sinks if s not in {sink for sink, _ in pairs}]
    if missing:
        raise ConfigError(
            f"FLOWPROOF_VERIFY_GROUPS names no group for the enabled sink {missing[0]} "
            "(add sink:group pairs for every sink in FLOWPROOF_SINKS)"
        )
    return pairs


def groups_of(pairs: list[SinkGroup], sink: Sink) -> list[str]:
    return [group for s, group in pairs if s == sink]


def subject(sink: str, group: str) -> str:
    """How evidence names a sink and group: `redis group flowproof`."""
    return f"{sink} group {group}"
