"""The `fusioncam` command: one module per subcommand, each a thin layer that parses arguments and calls the API."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
