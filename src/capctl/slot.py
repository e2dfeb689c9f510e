"""`capctl slot`: being built."""

from __future__ import annotations

import argparse

from capctl.errors import UserError


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    pass


def run(args: argparse.Namespace, name: str) -> int:
    raise UserError("capctl slot is not built yet")
