"""``python -m station`` is the ``station`` command."""

from station.cli import main

main()
