"""``station plugins``: the loaded plugins, and ``station plugins new NAME``, which writes
a plugin module and its test, ready to edit and passing.

The plugin labels series of chosen modalities (an option) and shows every part a real one
has: options checked in ``station_configure``, a classify hook, its docstring as the place
to say what it does. The test runs it through ``station.testing`` on files pydicom ships.
"""

from __future__ import annotations

import importlib.util
import keyword
import re
from pathlib import Path
from string import Template
from typing import Annotated

import typer

from station.cli.app import ConfigOption, app, config_from, fail
from station.errors import ConfigError
from station.service import load_setup

PLUGIN = Template('''\
"""$name: a station plugin. Say here what it does and which options it takes.

Enable it in station.yaml (paths are relative to that file), with its options:

    plugins: [$name.py]
    plugin_options:
      $name: {modalities: [MR, CT]}

Routes match the label it sets with ``match: {labels: {$name: "yes"}}``. See it act with
``station plugins``, ``station check`` and ``station preview FOLDER``. Every hook, its
arguments and return value: docs/plugins.md. Tests: ``python -m pytest test_$name.py``.
"""

from __future__ import annotations

from typing import Any

from station import hookimpl
from station.series import SeriesView

DEFAULTS: dict[str, Any] = {"modalities": ["MR"]}
settings: dict[str, Any] = dict(DEFAULTS)


@hookimpl
def station_configure(options: dict[str, Any]) -> None:
    """Take the options under plugin_options.$name; a ValueError refuses them."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown options {unknown}; expected {sorted(DEFAULTS)}")
    settings.clear()
    settings.update(DEFAULTS, **options)


@hookimpl
def station_classify_series(series: SeriesView) -> dict[str, str] | None:
    """Label the series (routes match labels); None adds no label."""
    if series.get("Modality") in settings["modalities"]:
        return {"$name": "yes"}
    return None
''')

TEST = Template('''\
"""Tests of the $name plugin: ``python -m pytest test_$name.py``.

station.testing runs the hooks and routes as ``station run`` does, without a network.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from station.errors import ConfigError
from station.testing import run_plugins, series_from_files

PLUGIN = Path(__file__).with_name("$name.py")
MR = get_testdata_file("MR_small.dcm")  # real files that come with pydicom
CT = get_testdata_file("CT_small.dcm")
ROUTES = [
    {
        "name": "labelled",
        "match": {"labels": {"$name": "yes"}},
        "destinations": ["research"],
    }
]


def test_labels_mr_series_and_a_route_sends_them_on() -> None:
    result = run_plugins(series_from_files(MR), plugins=[PLUGIN], routes=ROUTES)
    assert result.labels == {"$name": "yes"}
    assert result.destinations == ["research"]


def test_leaves_other_series_alone() -> None:
    result = run_plugins(series_from_files(CT), plugins=[PLUGIN], routes=ROUTES)
    assert (result.state, result.labels) == ("unrouted", {})


def test_options_choose_the_modalities() -> None:
    options = {"$name": {"modalities": ["CT"]}}
    result = run_plugins(series_from_files(CT), plugins=[PLUGIN], routes=ROUTES, options=options)
    assert result.labels == {"$name": "yes"}


def test_unknown_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown options"):
        run_plugins(series_from_files(MR), plugins=[PLUGIN], options={"$name": {"colour": 1}})
''')

_NAME = re.compile(r"[a-z][a-z0-9_]*")


def check_name(name: str) -> None:
    """Refuse a name that cannot be a plugin module, or that would shadow another module.

    :raises ValueError: with what to choose instead.
    """
    if not _NAME.fullmatch(name) or keyword.iskeyword(name):
        suggestion = re.sub(r"[^a-z0-9_]", "_", name.lower())
        raise ValueError(
            f"{name!r}: a plugin name is a Python module name: lowercase letters, digits and "
            f"'_', starting with a letter (for example {suggestion!r})"
        )
    if name.startswith("test_"):
        raise ValueError(f"{name!r}: plugin folders skip files named test_*.py; choose another")
    if importlib.util.find_spec(name) is not None:
        raise ValueError(f"{name!r}: a module of that name exists already; choose another")


def new_plugin(name: str, folder: Path) -> list[Path]:
    """Write ``NAME.py`` and ``test_NAME.py`` into ``folder`` (made if missing).

    :raises ValueError: a bad name (see ``check_name``).
    :raises FileExistsError: either file exists; then neither is written.
    """
    check_name(name)
    files = {folder / f"{name}.py": PLUGIN, folder / f"test_{name}.py": TEST}
    for path in files:
        if path.exists():
            raise FileExistsError(f"{path} exists already; nothing was written")
    folder.mkdir(parents=True, exist_ok=True)
    for path, template in files.items():
        with path.open("x", encoding="utf-8") as out:
            out.write(template.substitute(name=name))
    return list(files)


plugins_app = typer.Typer(help="Loaded plugins; `station plugins new NAME` starts one.")


app.add_typer(plugins_app, name="plugins")


@plugins_app.callback(invoke_without_command=True)
def plugins(ctx: typer.Context, config: ConfigOption = None) -> None:
    """List loaded plugins, their hooks and where each came from."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        setup = load_setup(config_from(config))
    except ConfigError as exc:
        raise fail(str(exc)) from None
    for info in setup.plugins.describe():
        typer.echo(f"{info.name}  ({info.origin})")
        for hook in info.hooks:
            typer.echo(f"    {hook}")
    if setup.plugins.transforms:
        typer.echo(f"transforms: {', '.join(sorted(setup.plugins.transforms))}")


@plugins_app.command("new")
def plugins_new(
    name: Annotated[str, typer.Argument(help="Plugin name: a Python module name.")],
    folder: Annotated[
        Path, typer.Option("--dir", file_okay=False, help="Where to write (default: here).")
    ] = Path("."),
) -> None:
    """Write a plugin module NAME.py and its test test_NAME.py, ready to edit."""
    try:
        plugin, test = new_plugin(name, folder)
    except (ValueError, FileExistsError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"wrote {plugin} and {test}")
    typer.echo(f"  test it:   python -m pytest {test}")
    typer.echo(f"  enable it: plugins: [{plugin.resolve()}] in station.yaml")
    typer.echo("  see it:    station plugins --config station.yaml; station preview FOLDER")
