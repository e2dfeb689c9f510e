"""`capctl`: the command line of the capacity engine (contract section 6).

Every command takes --help; a user mistake prints one line on stderr and exits non-zero, never a
traceback. ``DATABASE_URL`` points any command at a real PostgreSQL instead of the embedded one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg

from capctl.errors import UserError

# Commands whose implementation lives in its own module: (name, module, help).
# Each module has add_arguments(parser) and run(args) -> exit code.
_MODULE_COMMANDS = [
    ("serve", "capctl.serve", "local API Gateway emulator over the real handlers"),
    ("load", "capctl.load", "the Artillery load test, its verification and report"),
    ("rollup", "capctl.scheduled", "run the hourly metrics roll-up once"),
    ("check-alerts", "capctl.scheduled", "run the alert check once"),
    ("demo", "capctl.demo", "the whole main job on the embedded default, end to end"),
    ("cleanup", "capctl.cleanup", "remove synthetic bookings and free their capacity"),
    ("dashboard", "capctl.dashboard", "the observability dashboard of the local stack, live or as one HTML file"),
    ("slot", "capctl.slot", "one slot's forensics (show) or stop its bleeding (close)"),
]


def _db_up(args: argparse.Namespace) -> int:
    from capctl import database
    from capctl.migrate import migrate

    url = database.database_url(required=False) if not args.embedded else None
    if url is None:
        url = database.start_embedded()
    with database.connection(url) as conn:
        applied = migrate(conn)
    if applied:
        print(f"applied {', '.join(applied)}", file=sys.stderr)
    print(url)
    return 0


def _db_migrate(args: argparse.Namespace) -> int:
    from capctl import database
    from capctl.migrate import migrate

    with database.connection() as conn:
        applied = migrate(conn)
    print(f"applied {', '.join(applied)}" if applied else "schema is up to date")
    return 0


def _db_down(args: argparse.Namespace) -> int:
    from capctl import database

    print("stopped the embedded PostgreSQL" if database.stop_embedded() else "no embedded PostgreSQL was running")
    return 0


def _seed(args: argparse.Namespace) -> int:
    from capctl import database
    from capctl.seed import apply_seed, load_seed

    seed = load_seed(Path(args.file))
    with database.connection() as conn:
        counts = apply_seed(conn, seed)
    print(
        f"seeded {counts['restaurants']} restaurants, {counts['weekly']} weekly rules, {counts['overrides']} overrides"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from capacity.reconcile import over_capacity, slot_states
    from capctl import database

    with database.connection() as conn:
        states = slot_states(conn)
    over = over_capacity(states)
    if args.json:
        print(
            json.dumps(
                {"slots": len(states), "overCapacitySlots": [s.as_json() for s in over], "passed": not over}, indent=2
            )
        )
    else:
        print(f"reconciled {len(states)} slots with confirmed bookings: {len(over)} over capacity")
        for s in over:
            print(
                f"OVER CAPACITY {s.restaurant_id} {s.date} {s.time:%H:%M}: "
                f"{s.confirmed_covers} covers confirmed, max {s.max_covers}"
            )
    return 1 if over else 0


def _openapi(args: argparse.Namespace) -> int:
    from capctl.openapi import check, write

    if args.check:
        return check(Path(args.path))
    write(Path(args.path))
    print(f"wrote {args.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capctl", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = sub.add_parser("db", help="embedded PostgreSQL and migrations")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = db_sub.add_parser("up", help="start the embedded PostgreSQL (or use DATABASE_URL), migrate, print the URL")
    up.add_argument("--embedded", action="store_true", help="start the embedded server even if DATABASE_URL is set")
    up.set_defaults(func=_db_up)
    db_sub.add_parser("migrate", help="apply migrations to DATABASE_URL").set_defaults(func=_db_migrate)
    db_sub.add_parser("down", help="stop the embedded PostgreSQL that `db up` started").set_defaults(func=_db_down)

    seed = sub.add_parser("seed", help="load restaurants, weekly rules and overrides from a JSON file")
    seed.add_argument("file", metavar="FILE.json")
    seed.set_defaults(func=_seed)

    verify = sub.add_parser("verify", help="reconcile every slot; exit 1 when any is over capacity")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=_verify)

    openapi = sub.add_parser("openapi", help="write (or --check) docs/openapi.json from the handler's models")
    openapi.add_argument("--path", default="docs/openapi.json")
    openapi.add_argument("--check", action="store_true", help="exit 1 when the file differs from the code")
    openapi.set_defaults(func=_openapi)

    for name, module_name, help_text in _MODULE_COMMANDS:
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command, name)
        command.set_defaults(func=_runner(module, name))
    return parser


def _runner(module: object, name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        result: int = module.run(args, name)  # type: ignore[attr-defined]
        return result

    return run


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except UserError as exc:
        print(f"capctl: error: {exc}", file=sys.stderr)
        return exc.code
    except psycopg.errors.UndefinedTable:
        print("capctl: error: the database has no capacity schema: run `capctl db migrate`", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        print(f"capctl: error: database: {_first_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"capctl: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("capctl: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
