"""Placeholder: being written."""

from __future__ import annotations

import argparse

from capctl.errors import UserError


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    pass


def run(args: argparse.Namespace, command: str) -> int:
    raise UserError(f"capctl {command} is not built yet")
