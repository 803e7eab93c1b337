"""Plugins bundled with station. Each registers through the ``station.plugins`` entry point,
exactly like a third-party plugin, so each is a starting point to copy."""
