"""The `evaluate` subcommand (faithfulness metrics); filled in by the metrics work."""

from __future__ import annotations


def add_subcommands(sub) -> None:
    """Register the evaluate subcommand on the parser's subparsers."""
    return None
