"""`python -m cnnvis_cli` is the `cnnvis` command."""

from cnnvis_cli.cli import command_line

command_line()
