"""The consumer application: handlers registered per event type.

    consumer = Consumer(load_registry(settings.schema_dir))

    @consumer.handler("orders.OrderPlaced", model=OrderPlaced)
    async def on_order_placed(event: Event[OrderPlaced]) -> None:
        ...

flowproof wraps each handler with decoding, validation, receipts, metrics, retries and
dead-lettering (`consumers.processing`); `consumers.run.consume` runs it on a sink. Events of a
type without a handler are only receipted, which is what `flowproof consume` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from pydantic import BaseModel

from flowproof.consumers.delivery import Delivery
from flowproof.consumers.event import Event, Payload
from flowproof.core.errors import ConfigError
from flowproof.schemas.envelope import Envelope
from flowproof.schemas.registry import SchemaRegistry, SchemaVersion

P = TypeVar("P")
M = TypeVar("M")

# A handler may be a coroutine function or a plain function.
HandlerFn = Callable[[Event[P]], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class Route(Generic[P]):
    """Where events of one type go: the handler, its reader schema and payload model."""

    event_type: str
    handler: HandlerFn[P]
    reader: SchemaVersion
    model: type[P] | None

    def event(
        self, envelope: Envelope, writer: SchemaVersion, datum: Payload, delivery: Delivery
    ) -> Event[P]:
        """The handler's event; a model that refuses the payload raises here (a handler error)."""
        payload: Any = datum if self.model is None else _to_model(self.model, datum)
        return Event(
            envelope=envelope, payload=payload, writer=writer, reader=self.reader, delivery=delivery
        )


def _to_model(model: type[M], datum: Payload) -> M:
    if issubclass(model, BaseModel):
        return model.model_validate(datum)
    return model(**datum)


def _required_fields(model: type[Any]) -> set[str]:
    if issubclass(model, BaseModel):
        return {name for name, info in model.model_fields.items() if info.is_required()}
    if dataclasses.is_dataclass(model):
        return {
            f.name
            for f in dataclasses.fields(model)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
    return set()


class Consumer:
    """Handlers by event type, each with the reader schema its payload is resolved to."""

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry
        self._routes: dict[str, Route[Any]] = {}

    @overload
    def handler(
        self, event_type: str, *, version: int | None = None
    ) -> Callable[[HandlerFn[Payload]], HandlerFn[Payload]]: ...

    @overload
    def handler(
        self, event_type: str, *, model: type[M], version: int | None = None
    ) -> Callable[[HandlerFn[M]], HandlerFn[M]]: ...

    def handler(
        self, event_type: str, *, model: type[Any] | None = None, version: int | None = None
    ) -> Callable[[HandlerFn[Any]], HandlerFn[Any]]:
        """Register the decorated function for `event_type`.

        The payload is resolved to schema `version` of the type (default: the newest) and, when
        `model` is given (a pydantic model or a dataclass), converted to it; a model whose
        required fields the reader schema lacks is refused here, at start-up.
        """

        def register(fn: HandlerFn[Any]) -> HandlerFn[Any]:
            self.add_handler(event_type, fn, model=model, version=version)
            return fn

        return register

    def add_handler(
        self,
        event_type: str,
        fn: HandlerFn[Any],
        *,
        model: type[Any] | None = None,
        version: int | None = None,
    ) -> None:
        """Register `fn` for `event_type` (the non-decorator form of `handler`)."""
        if event_type in self._routes:
            raise ConfigError(f"{event_type} already has a handler")
        versions = self.registry.versions(event_type)  # UnknownEventType when there is none
        if version is not None and not 1 <= version <= len(versions):
            raise ConfigError(f"{event_type} has no schema version {version}")
        reader = versions[-1] if version is None else versions[version - 1]
        if model is not None:
            declared = {f["name"] for f in reader.parsed["fields"]}
            missing = sorted(_required_fields(model) - declared)
            if missing:
                raise ConfigError(
                    f"{model.__name__} requires {', '.join(missing)}, which "
                    f"{event_type} v{reader.version} does not have"
                )
        self._routes[event_type] = Route(event_type, fn, reader, model)

    def route(self, event_type: str) -> Route[Any] | None:
        """The route of `event_type`, or None: such events are only receipted."""
        return self._routes.get(event_type)

    @property
    def event_types(self) -> list[str]:
        return sorted(self._routes)
