"""The `flowproof` console script: one command per job of DESIGN.md.

Commands here are thin: they load the settings, configure logging and call into the package that
does the work. Every error that is the user's to fix (configuration, a component that cannot be
reached) ends the process with exit code 2 and a message naming the variable or component.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from flowproof import __version__
from flowproof.config import Settings, load_settings
from flowproof.errors import (
    EXIT_CONFIG,
    ComponentUnreachable,
    ConfigError,
    NotImplementedYet,
)
from flowproof.logging import configure_logging, get_logger
from flowproof.redact import scrub

T = TypeVar("T")

app = typer.Typer(
    name="flowproof",
    help="Proves that events really flow: outbox relay, schema-validated consumers, verifier.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database tables of flowproof.", no_args_is_help=True)
schemas_app = typer.Typer(help="The Avro schemas of the event types.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(schemas_app, name="schemas")

log = get_logger(__name__)


@dataclass
class Context:
    config_file: Path | None

    def settings(self) -> Settings:
        """Load and validate the configuration, then set up logging from it."""
        settings = load_settings(self.config_file)
        configure_logging(settings.log_level, settings.log_format)
        return settings


def fail(message: str, code: int = EXIT_CONFIG) -> NoReturn:
    """Print `flowproof: message` to stderr and exit with `code`."""
    typer.echo(f"flowproof: {scrub(message)}", err=True)
    raise typer.Exit(code)


def run(ctx: typer.Context, job: Callable[[Settings], Coroutine[Any, Any, T]]) -> T:
    """Run an async job with loaded settings, mapping flowproof's errors to exit codes."""
    context: Context = ctx.ensure_object(Context)
    try:
        settings = context.settings()
        return asyncio.run(job(settings))
    except ConfigError as exc:
        fail(f"configuration error: {exc}")
    except ComponentUnreachable as exc:
        fail(str(exc))
    except NotImplementedYet as exc:
        fail(str(exc))


def not_yet(command: str, issue: int) -> Callable[[Settings], Coroutine[Any, Any, None]]:
    async def job(_settings: Settings) -> None:
        raise NotImplementedYet(f"`flowproof {command}` is not implemented yet (issue #{issue})")

    return job


def _version(value: bool) -> None:
    if value:
        typer.echo(f"flowproof {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML file with settings (environment wins over it)."),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """flowproof: proves that events really flow."""
    ctx.obj = Context(config_file=config)


@db_app.command("migrate")
def db_migrate(ctx: typer.Context) -> None:
    """Create or upgrade flowproof's tables, idempotently."""

    async def job(settings: Settings) -> None:
        from flowproof.connect import connect_postgres  # noqa: PLC0415 - keep start-up fast
        from flowproof.migrations import migrate  # noqa: PLC0415

        conn = await connect_postgres(settings)
        try:
            applied = await migrate(conn, settings.outbox_table)
        finally:
            await conn.close()
        versions = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none"
        log.info("db.migrated", applied=versions)
        typer.echo(f"migrations applied: {versions}")

    run(ctx, job)


@app.command()
def emit(
    ctx: typer.Context,
    type_: Annotated[str, typer.Option("--type", help="Event type (Avro full name).")],
    aggregate_type: Annotated[str, typer.Option(help="Aggregate type, e.g. order.")],
    aggregate_id: Annotated[str, typer.Option(help="Aggregate id.")],
    payload: Annotated[str, typer.Option(help="Payload as JSON.")],
) -> None:
    """Write one event to the outbox, validated against its schema."""
    run(ctx, not_yet("emit", 3))


@app.command()
def relay(ctx: typer.Context) -> None:
    """Long-running outbox relay to every enabled sink."""
    run(ctx, not_yet("relay", 3))


@app.command()
def consume(
    ctx: typer.Context,
    sink: Annotated[str, typer.Option(help="redis or kafka.")],
    group: Annotated[str | None, typer.Option(help="Consumer group.")] = None,
) -> None:
    """Long-running schema-validated consumer that records receipts."""
    run(ctx, not_yet("consume", 4))


@app.command()
def verify(ctx: typer.Context) -> None:
    """Long-running verifier serving /metrics, /healthz and /readyz."""
    run(ctx, not_yet("verify", 5))


@app.command()
def check(ctx: typer.Context) -> None:
    """One evaluation of the checks, printed, then exit (0 pass, 1 fail, 2 unreachable)."""
    run(ctx, not_yet("check", 5))


@app.command()
def smoke(ctx: typer.Context) -> None:
    """Post-deploy check: canary events through the real pipeline, then the checks."""
    run(ctx, not_yet("smoke", 5))


@schemas_app.command("check")
def schemas_check(ctx: typer.Context) -> None:
    """Validate every schema and the compatibility of each new version."""
    run(ctx, not_yet("schemas check", 4))


@app.command()
def demo(ctx: typer.Context) -> None:
    """Run the whole pipeline on local services with a generated workload."""
    run(ctx, not_yet("demo", 5))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
