"""Commands that read the journal beside a running station: status, trace, retry."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from station.cli.app import AsJson, ConfigOption, app, config_from, fail, journal_of
from station.ops.status import render_status, status_report
from station.ops.trace import render as render_trace
from station.ops.trace import trace


@app.command()
def status(
    config: ConfigOption = None,
    as_json: AsJson = False,
) -> None:
    """Queues per destination, dead letters and quarantine with their reasons."""
    journal = journal_of(config_from(config))
    state = status_report(journal)
    journal.close()
    typer.echo(json.dumps(state, indent=2) if as_json else render_status(state))


@app.command("trace")
def trace_command(
    uid: Annotated[str, typer.Argument(help="A Study, Series or SOP Instance UID.")],
    config: ConfigOption = None,
    as_json: AsJson = False,
) -> None:
    """The whole history of a study, series or instance: received, hooks, routes, every
    dispatch attempt, and where it is now."""
    journal = journal_of(config_from(config))
    histories = trace(journal, uid)
    journal.close()
    if not histories:
        raise fail(f"{uid}: no study, series or (kept) instance with this UID in the journal")
    if as_json:
        typer.echo(json.dumps([h.as_dict() for h in histories], indent=2))
    else:
        typer.echo(render_trace(uid, histories))


@app.command()
def retry(
    config: ConfigOption = None,
    destination: Annotated[str | None, typer.Option(help="Only this destination.")] = None,
    series: Annotated[str | None, typer.Option(help="Only this Series Instance UID.")] = None,
) -> None:
    """Re-queue dead-lettered deliveries (and re-route quarantined series)."""
    journal = journal_of(config_from(config))
    count = journal.retry_dead_letters(destination, series)
    journal.close()
    if not count:
        raise fail(
            "nothing to retry"
            + (f" for destination {destination}" if destination else "")
            + (f" for series {series}" if series else "")
        )
    typer.echo(f"re-queued {count}; a running station picks them up within a second")
