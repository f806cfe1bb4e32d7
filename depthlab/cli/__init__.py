"""``depthlab`` command line: thin; parses, builds a RunConfig, calls the API.

``commands`` holds the commands and ``main``; ``help`` the help texts made from the registries;
``output`` what the CLI prints besides results (one-line messages, Ctrl-C)."""
from depthlab.cli.commands import build_parser, main
from depthlab.cli.output import cli_spelling

__all__ = ["main", "build_parser", "cli_spelling"]
