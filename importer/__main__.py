"""``python -m importer``: the same as the ``blueshift-import`` command."""

from .cli import main

main(prog_name="blueshift-import")
