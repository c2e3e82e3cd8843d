"""structlog set-up: JSON when stderr is not a terminal, readable when it is; secrets scrubbed.

Logs go to stderr so that stdout stays free for command output (`check --json`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO, cast

import structlog

from flowproof.core.redact import scrub

LogFormat = Literal["auto", "json", "console"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub_value(v) for v in value)
    if isinstance(value, BaseException):
        return scrub(f"{type(value).__name__}: {value}")
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: no secret or DSN password leaves in any value of any log line."""
    return {key: _scrub_value(value) for key, value in event_dict.items()}


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the time of writing.

    Binding the stream at configure time breaks when stderr is replaced later (test runners,
    CliRunner) and the bound object is closed.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(
    level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None
) -> None:
    """Configure structlog for the whole process; safe to call more than once."""
    probe = stream if stream is not None else sys.stderr
    tty = probe.isatty()
    use_json = fmt == "json" or (fmt == "auto" and not tty)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=tty)
    )
    out = stream if stream is not None else cast(TextIO, _CurrentStderr())
    _route_standard_logging(_LEVELS[level], renderer, out)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def _module_from_logger_name(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    record = event_dict.get("_record")
    if record is not None:
        event_dict["module"] = record.name
    return event_dict


def _route_standard_logging(level: int, renderer: structlog.typing.Processor, out: TextIO) -> None:
    """Send the standard-library logs of the drivers (aiokafka, asyncpg) through the same
    renderer and secret scrubbing, so that every line is JSON (or readable) and redacted."""
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                _module_from_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_secrets,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    # Drivers are chatty at INFO; their warnings and errors are what an operator needs.
    root.setLevel(max(level, logging.WARNING))


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger bound to the module name; event names are stable (`relay.batch_published`)."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(module=name)
    return logger
