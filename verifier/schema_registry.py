"""The schema registry as a component of the verdict (FLOWPROOF_SCHEMA_REGISTRY_URL).

When a registry is configured, relay and consumers cannot frame or read a message without it:
the verifier asks it each evaluation, and a registry that does not answer fails
`components.up` (evidence `schema-registry: ...`) and makes /readyz answer 503.
"""

from __future__ import annotations

import asyncio

from flowproof.core.errors import ComponentUnreachable
from flowproof.schemas.registry_client import COMPONENT, RegistryClient
from flowproof.verifier.model import ComponentState


async def registry_components(
    client: RegistryClient | None, seconds: float
) -> tuple[ComponentState, ...]:
    """() without a registry, else its state: up, or down with why."""
    if client is None:
        return ()
    try:
        async with asyncio.timeout(seconds):
            await client.check()
    except ComponentUnreachable as exc:
        return (ComponentState(COMPONENT, False, exc.detail),)
    except TimeoutError:
        return (ComponentState(COMPONENT, False, f"no answer within {seconds:g}s"),)
    return (ComponentState(COMPONENT, True),)
