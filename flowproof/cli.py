"""The `flowproof` console script: one command per job of docs/design.md.

Commands here are thin: they load the settings, configure logging and call into the package that
does the work. Every error that is the user's to fix (configuration, a component that cannot be
reached) ends the process with exit code 2 and a message naming the variable or component.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from flowproof import __version__
from flowproof.consumers import run as consumers_run
from flowproof.core.config import Settings, load_settings
from flowproof.core.connect import connect_postgres
from flowproof.core.errors import (
    EXIT_CHECK_FAILED,
    EXIT_CONFIG,
    EXIT_OK,
    ComponentUnreachable,
    ConfigError,
    NotImplementedYet,
)
from flowproof.core.identifiers import validate_group_name
from flowproof.core.logging import configure_logging, get_logger
from flowproof.core.migrations import migrate
from flowproof.core.redact import scrub
from flowproof.core.sinks import SINK_NAMES
from flowproof.demo import DemoError, Timeline, run_demo
from flowproof.publisher import commands as relay_commands
from flowproof.publisher.errors import RelayCrashed
from flowproof.publisher.maintenance import PartitionState, format_partitions
from flowproof.publisher.parked import ParkedRow, format_table
from flowproof.schemas.compat import CheckReport, check_schema_dirs, parse_mode
from flowproof.schemas.errors import ContractError, SchemaFileError
from flowproof.schemas.registry_check import RegistryReport, check_registry
from flowproof.schemas.registry_client import RegistryClient
from flowproof.verifier import commands as verify_commands
from flowproof.verifier.service import run_verifier

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
parked_app = typer.Typer(help="Outbox rows the relay parked.", no_args_is_help=True)
app.add_typer(parked_app, name="parked")

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

        conn = await connect_postgres(settings)
        try:
            applied = await migrate(
                conn, settings.outbox_table, partition_seconds=settings.relay_partition_seconds
            )
        finally:
            await conn.close()
        versions = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none"
        log.info("db.migrated", applied=versions)
        typer.echo(f"migrations applied: {versions}")

    run(ctx, job)


@db_app.command("sinks")
def db_sinks(
    ctx: typer.Context,
    remove: Annotated[
        str | None,
        typer.Option(help="Take this sink out of the outbox for good (its rows may be pruned)."),
    ] = None,
) -> None:
    """List the sinks of the outbox: pruning keeps every row one of them has not published."""

    async def job(settings: Settings) -> list[str]:
        return await relay_commands.outbox_sinks(settings, remove)

    sinks = run(ctx, job)
    if remove is not None:
        typer.echo(f"removed {remove}")
    typer.echo(f"sinks of the outbox: {', '.join(sinks) or 'none (no relay has run)'}")


@db_app.command("partitions")
def db_partitions(ctx: typer.Context) -> None:
    """List the time partitions of the outbox, its delivery records and the receipts, and what
    the relay's next drop would do with each: live, due, kept (and why), default.

    Runs as the table owner or the relay's role (EXECUTE of `<outbox>_partitions_maintain`).
    """

    async def job(settings: Settings) -> list[PartitionState]:
        return await relay_commands.outbox_partitions(settings)

    states = run(ctx, job)
    typer.echo(format_partitions(states))


@app.command()
def emit(
    ctx: typer.Context,
    *,
    type_: Annotated[str, typer.Option("--type", help="Event type (Avro full name).")],
    aggregate_type: Annotated[str, typer.Option(help="Aggregate type, e.g. order.")],
    aggregate_id: Annotated[str, typer.Option(help="Aggregate id.")],
    payload: Annotated[str, typer.Option(help="Payload as JSON.")],
    headers: Annotated[
        str | None, typer.Option(help='Headers as a JSON object, e.g. {"traceparent": "00-..."}.')
    ] = None,
) -> None:
    """Write one event to the outbox, validated against its schema; prints its id.

    An event that does not fit its schema (or the envelope, routing or size rules) exits 2 with
    a message naming the field, and nothing is written.
    """

    async def job(settings: Settings) -> str:
        event_id = await relay_commands.emit_event(
            settings,
            event_type=type_,
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            payload=payload,
            headers=headers,
        )
        return str(event_id)

    try:
        event_id = run(ctx, job)
    except ContractError as exc:
        fail(f"invalid event: {exc}")
    typer.echo(event_id)


@app.command()
def relay(ctx: typer.Context) -> None:
    """Long-running outbox relay to every enabled sink (stops cleanly on SIGTERM)."""

    try:
        run(ctx, relay_commands.serve)
    except ContractError as exc:  # a broken schema file in FLOWPROOF_SCHEMA_DIR
        fail(str(exc))
    except RelayCrashed as exc:
        fail(str(exc), code=EXIT_CHECK_FAILED)


@parked_app.command("list")
def parked_list(
    ctx: typer.Context,
    sink: Annotated[
        str | None, typer.Option(help=f"Only this sink: {' or '.join(SINK_NAMES)}.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows per sink.")] = 1000,
) -> None:
    """Show the parked outbox rows: seq, id, type, aggregate, sink, reason, since, error."""

    _check_sink(sink)

    async def job(settings: Settings) -> list[ParkedRow]:
        return await relay_commands.parked_list(settings, sink, limit)

    rows = run(ctx, job)
    typer.echo(format_table(rows) if rows else "no parked rows")


@parked_app.command("retry")
def parked_retry(
    ctx: typer.Context,
    sink: Annotated[
        str | None, typer.Option(help=f"Only this sink: {' or '.join(SINK_NAMES)}.")
    ] = None,
    event_id: Annotated[str | None, typer.Option("--id", help="The event id to retry.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Retry every parked row.")] = False,
) -> None:
    """Clear the park mark (of one event, or all) so the relay publishes the rows again."""

    _check_sink(sink)
    if (event_id is None) == (not all_):
        fail("give exactly one of --id ID and --all")
    try:
        chosen = uuid.UUID(event_id) if event_id is not None else None
    except ValueError:
        fail(f"--id {event_id!r} is not a UUID")

    async def job(settings: Settings) -> dict[str, int]:
        return await relay_commands.parked_retry(settings, sink, chosen)

    cleared = run(ctx, job)
    for name, count in cleared.items():
        typer.echo(f"{name}: {count} row(s) will be retried")


def _check_sink(sink: str | None) -> None:
    if sink is not None and sink not in SINK_NAMES:
        fail(f"--sink {sink!r}: expected one of {', '.join(SINK_NAMES)}")


@app.command()
def consume(
    ctx: typer.Context,
    sink: Annotated[str, typer.Option(help=" or ".join(SINK_NAMES) + ".")],
    group: Annotated[
        str | None, typer.Option(help="Consumer group (default FLOWPROOF_CONSUMER_GROUP).")
    ] = None,
    drain: Annotated[
        bool, typer.Option("--drain", help="Consume what is there, print the totals, exit.")
    ] = False,
) -> None:
    """Long-running schema-validated consumer that records receipts."""

    async def job(settings: Settings) -> str | None:

        if sink not in SINK_NAMES:
            raise ConfigError(f"--sink: {sink!r} is not one of {', '.join(SINK_NAMES)}")
        if group is not None:
            try:
                validate_group_name(group)
            except ValueError as exc:
                raise ConfigError(f"--group: {exc}") from None
        stats = await consumers_run.serve(settings, sink=sink, group=group, drain=drain)
        if stats is None:
            return None
        return " ".join(f"{name}={value}" for name, value in vars(stats).items())

    totals = run(ctx, job)
    if drain and totals is not None:
        typer.echo(totals)


@app.command()
def verify(ctx: typer.Context) -> None:
    """Long-running verifier serving /metrics, /healthz and /readyz (stops on SIGTERM)."""

    run(ctx, run_verifier)


JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout instead of the table.")
]
JunitOption = Annotated[
    Path | None, typer.Option("--junit-xml", help="Also write the results as JUnit XML to PATH.")
]


def _report_and_exit(report: Any, as_json: bool, junit_xml: Path | None, suite: str) -> NoReturn:

    code = verify_commands.publish(
        report, as_json=as_json, junit_xml=junit_xml, suite=suite, out=sys.stdout
    )
    if report.unreachable:
        fail(verify_commands.unreachable_message(report), code)
    raise typer.Exit(code)


@app.command()
def check(ctx: typer.Context, json_: JsonOption = False, junit_xml: JunitOption = None) -> None:
    """One evaluation of the checks, printed, then exit (0 pass, 1 fail, 2 unreachable)."""

    _report_and_exit(run(ctx, verify_commands.check_once), json_, junit_xml, "flowproof check")


@app.command()
def smoke(
    ctx: typer.Context,
    json_: JsonOption = False,
    junit_xml: JunitOption = None,
    events: Annotated[
        int | None,
        typer.Option(min=1, max=10000, help="Canaries to emit (default FLOWPROOF_SMOKE_EVENTS)."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0.1, help="Seconds to wait for them (default FLOWPROOF_SMOKE_TIMEOUT_SECONDS)."
        ),
    ] = None,
) -> None:
    """Post-deploy check: canary events through the real pipeline, then the checks."""

    async def job(settings: Settings) -> Any:
        return await verify_commands.smoke_once(settings, events, timeout)

    _report_and_exit(run(ctx, job), json_, junit_xml, "flowproof smoke")


@schemas_app.command("check")
def schemas_check(
    ctx: typer.Context,
    mode: Annotated[
        str,
        typer.Option(
            help="BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL or "
            "FULL_TRANSITIVE."
        ),
    ] = "BACKWARD",
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Your .avsc folder, checked beside the built-in schemas "
            "(default: FLOWPROOF_SCHEMA_DIR).",
        ),
    ] = None,
    registry: Annotated[
        bool,
        typer.Option(
            "--registry",
            help="Also check them against FLOWPROOF_SCHEMA_REGISTRY_URL: its versions and its "
            "compatibility rules for each subject (exit 2 when it cannot be reached).",
        ),
    ] = False,
) -> None:
    """Validate every schema and the compatibility of each new version (exit 1 on a problem)."""

    async def job(settings: Settings) -> tuple[CheckReport, RegistryReport | None]:
        chosen = parse_mode(mode)
        folder = directory if directory is not None else settings.schema_dir
        try:
            report = check_schema_dirs([folder] if folder else [], chosen)
        except SchemaFileError as exc:
            source = "--dir" if directory is not None else "FLOWPROOF_SCHEMA_DIR"
            raise ConfigError(f"{source}: {exc}") from None
        if not registry:
            return report, None
        client = RegistryClient.from_settings(settings)
        if client is None:
            raise ConfigError("--registry needs FLOWPROOF_SCHEMA_REGISTRY_URL")
        try:
            remote = await check_registry(
                client,
                report.versions,
                strategy=settings.schema_registry_subject_name_strategy,
                topic_prefix=settings.topic_prefix,
            )
        finally:
            await client.aclose()
        return report, remote

    report, remote = run(ctx, job)
    for line in report.lines():
        typer.echo(line)
    if remote is not None:
        for line in [*remote.lines, *map(str, remote.problems), remote.summary()]:
            typer.echo(line)
    ok = report.ok and (remote is None or remote.ok)
    raise typer.Exit(EXIT_OK if ok else EXIT_CHECK_FAILED)


@app.command()
def demo(
    ctx: typer.Context,
    seconds: Annotated[
        float, typer.Option("--seconds", min=20, help="How long the workload runs.")
    ] = 75.0,
    rate: Annotated[
        float, typer.Option("--rate", min=1, max=5000, help="Events per second.")
    ] = 200.0,
    prometheus: Annotated[
        bool,
        typer.Option(
            "--prometheus",
            help="Also run a local Prometheus with flowproof's alert rules (its /alerts page "
            "shows them firing during the defect); needs Debian's `prometheus`.",
        ),
    ] = False,
) -> None:
    """Run the whole pipeline on local services with a generated workload, then the verdict.

    Starts the relay, both consumers and the verifier, emits order events for a minute, freezes
    the Kafka consumer for a while so a check fails and recovers, then prints the checks.
    """

    async def job(settings: Settings) -> int:
        return await run_demo(settings, Timeline(seconds=seconds, rate=rate), prometheus=prometheus)

    try:
        code = run(ctx, job)
    except DemoError as exc:
        fail(str(exc), code=EXIT_CHECK_FAILED)
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
