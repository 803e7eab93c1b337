"""Finding the plugin modules the config names: files, folders of files, importable
modules. Import errors become ConfigErrors that name the file or module."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from station.errors import ConfigError


def import_file(path: Path) -> ModuleType:
    """Import a plugin file as a module of its own; an error names the file."""
    name = f"station_plugin_{path.stem.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ConfigError(f"{path}: plugin failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def load_target(target: str) -> list[tuple[ModuleType, str]]:
    """The plugin modules one entry of ``plugins`` names, each with where it came from: a
    folder's ``*.py`` files (not ``_*`` or ``test_*``), a file, or an importable module."""
    path = Path(target)
    if path.is_dir():
        return [
            (import_file(p), str(p))
            for p in sorted(path.glob("*.py"))
            if not p.name.startswith("_") and not p.name.startswith("test_")
        ]
    if path.suffix == ".py" or "/" in target:
        if not path.exists():
            raise ConfigError(f"plugins: {target}: no such file or folder")
        return [(import_file(path), str(path))]
    try:
        module = importlib.import_module(target)
    except Exception as exc:
        raise ConfigError(
            f"plugins: module {target!r} cannot be imported: {type(exc).__name__}: {exc}"
        ) from exc
    return [(module, f"module {target}")]
