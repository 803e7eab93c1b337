"""``station quarantine``: rejected inputs held in quarantine: list, release, discard."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from station.cli.app import AsJson, ConfigOption, app, config_from, fail, journal_of
from station.ops.status import render_quarantine
from station.store.quarantine import Quarantine, QuarantineError
from station.store.states import QuarantineState

quarantine_app = typer.Typer(help="Rejected inputs held in quarantine: list, release, discard.")


app.add_typer(quarantine_app, name="quarantine")


ItemIds = Annotated[list[int], typer.Argument(help="Item numbers (`station quarantine list`).")]


def _quarantine(config: Path | None) -> Quarantine:
    settings = config_from(config)
    return Quarantine(settings.storage.path, journal_of(settings))


@quarantine_app.command("list")
def quarantine_list(
    config: ConfigOption = None,
    as_json: AsJson = False,
    every: Annotated[
        bool, typer.Option("--all", help="Released, discarded and gone items too.")
    ] = False,
) -> None:
    """Rejected inputs held in quarantine, with reason, source and time."""
    quarantine = _quarantine(config)
    items = quarantine.items(None if every else QuarantineState.HELD)
    quarantine.journal.close()
    if as_json:
        typer.echo(json.dumps([item.as_dict() for item in items], indent=2))
    else:
        typer.echo(render_quarantine([item.as_dict() for item in items]) or "quarantine is empty")


@quarantine_app.command("release")
def quarantine_release(ids: ItemIds, config: ConfigOption = None) -> None:
    """Move items back to where they were found, for the drop folder to take again."""
    _resolve(ids, config, lambda q, i: f"released {i} to {q.release(i)}")


@quarantine_app.command("discard")
def quarantine_discard(ids: ItemIds, config: ConfigOption = None) -> None:
    """Delete items from quarantine for good."""

    def discard(quarantine: Quarantine, item_id: int) -> str:
        quarantine.discard(item_id)
        return f"discarded {item_id}"

    _resolve(ids, config, discard)


def _resolve(ids: list[int], config: Path | None, action: Callable[[Quarantine, int], str]) -> None:
    quarantine = _quarantine(config)
    errors = []
    for item_id in ids:
        try:
            typer.echo(action(quarantine, item_id))
        except QuarantineError as exc:
            errors.append(str(exc))
    quarantine.journal.close()
    if errors:
        raise fail("\n".join(errors))
