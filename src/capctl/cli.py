"""`capctl`: the command line of the capacity engine.

Every command takes --help; a user mistake prints one line on stderr and exits non-zero, never a
traceback. ``DATABASE_URL`` points any command at a real PostgreSQL instead of the embedded one.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg

from capctl.errors import UserError
from capctl.text import plural

EPILOG = """\
database: the embedded PostgreSQL that `capctl db up` starts (its state in $CAPCTL_HOME, default
.capctl/), or the PostgreSQL that DATABASE_URL names (staging, RDS Proxy) for every command.
first commands of an on-call operator: capctl verify, capctl slot show, capctl check-alerts --dry-run.
"""

# Commands whose implementation lives in its own module: (name, module, help), in the order
# --help lists them. Each module has add_arguments(parser, name) and run(args, name) -> exit code.
_MODULE_COMMANDS = [
    ("serve", "capctl.serve", "local API Gateway emulator over the real handlers"),
    ("load", "capctl.load", "the Artillery load test, its verification and report"),
    ("demo", "capctl.demo", "the whole main job on a fresh embedded PostgreSQL of its own, end to end"),
    ("verify", "capctl.verify", "reconcile every booked slot; exit 1 when any is overbooked"),
    ("slot", "capctl.slot", "one slot's forensics (show) or stop its bleeding (close)"),
    ("booking", "capctl.booking_cmd", "cancel a booking as an operator (frees its covers, records the event)"),
    ("check-alerts", "capctl.scheduled", "run the alert check once"),
    ("rollup", "capctl.scheduled", "run the hourly metrics roll-up once"),
    ("dashboard", "capctl.dashboard", "the observability dashboard of the local stack, live or as one HTML file"),
    ("cleanup", "capctl.cleanup", "remove synthetic bookings and free their capacity"),
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
    from capctl.seed import BelowBookings, apply_seed, load_seed

    seed = load_seed(Path(args.file))
    try:
        with database.connection() as conn:
            result = apply_seed(
                conn,
                seed,
                actor=args.actor,
                allow_below_bookings=args.allow_below_bookings,
                reason=f"capctl seed {Path(args.file).name}",
            )
    except BelowBookings as exc:
        for s in exc.slots:
            print(
                f"capctl: refused: restaurant {s.restaurant_id} {s.date} {s.time:%H:%M}: "
                f"{s.confirmed_covers} covers confirmed, new capacity {s.max_covers}",
                file=sys.stderr,
            )
        print(
            f"capctl: nothing was changed: {plural(len(exc.slots), 'future slot')} would fall below their "
            "confirmed covers; "
            "move those bookings first, or pass --allow-below-bookings to apply it anyway (alerts will warn)",
            file=sys.stderr,
        )
        return 1
    print(result.describe())
    for s in result.below_bookings:
        print(
            f"warning: restaurant {s.restaurant_id} {s.date} {s.time:%H:%M}: {s.confirmed_covers} covers confirmed, "
            f"capacity now {s.max_covers}: move guests (capctl slot show {s.restaurant_id} {s.date} {s.time:%H:%M})"
        )
    return 0


def _openapi(args: argparse.Namespace) -> int:
    from capctl.openapi import check, write

    path = Path(args.path)
    if args.check:
        return check(path)
    if not path.parent.is_dir():
        raise UserError(f"{path.parent} is not a directory: create it first, or give another --path")
    write(path)
    print(f"wrote {args.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capctl",
        description="The command line of the capacity engine: local stack, load test, operations.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = sub.add_parser(
        "db", help="embedded PostgreSQL and migrations", description="embedded PostgreSQL and migrations"
    )
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = db_sub.add_parser("up", help="start the embedded PostgreSQL (or use DATABASE_URL), migrate, print the URL")
    up.add_argument("--embedded", action="store_true", help="start the embedded server even if DATABASE_URL is set")
    up.set_defaults(func=_db_up)
    db_sub.add_parser("migrate", help="apply migrations to DATABASE_URL").set_defaults(func=_db_migrate)
    db_sub.add_parser("down", help="stop the embedded PostgreSQL that `db up` started").set_defaults(func=_db_down)

    seed = sub.add_parser(
        "seed",
        help="load restaurants, weekly rules and overrides from a JSON file",
        description="load restaurants, weekly rules and overrides from a JSON file; re-running it changes only "
        "what differs, and every change is recorded in capacity_changes",
    )
    seed.add_argument("file", metavar="FILE.json", help="the seed file: restaurants, weekly rules, overrides")
    seed.add_argument(
        "--actor", help="who makes this change, recorded in capacity_changes (default: your OS user name)"
    )
    seed.add_argument(
        "--allow-below-bookings",
        action="store_true",
        help="apply a change even if it lowers a future slot below its confirmed covers (it is recorded and alerted)",
    )
    seed.set_defaults(func=_seed)

    openapi = sub.add_parser("openapi", help="write (or --check) docs/openapi.json from the handler's models")
    openapi.add_argument(
        "--path", default="docs/openapi.json", help="the document to write or check (default: docs/openapi.json)"
    )
    openapi.add_argument("--check", action="store_true", help="exit 1 when the file differs from the code")
    openapi.set_defaults(func=_openapi)

    for name, module_name, help_text in _MODULE_COMMANDS:
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command, name)
        command.set_defaults(func=_runner(module, name))
    for command in [*sub.choices.values(), *db_sub.choices.values()]:
        command.set_defaults(_parser=command)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("capacity-engine")
    except PackageNotFoundError:
        return "unknown"


def _runner(module: object, name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        result: int = module.run(args, name)  # type: ignore[attr-defined]
        return result

    return run


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    from capctl.database import redact  # an error line never shows a database password

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # The command's own usage, not the top-level one: `capctl verify --foo` says what verify takes.
        args._parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code: int = args.func(args)
    except UserError as exc:
        print(f"capctl: error: {redact(str(exc))}", file=sys.stderr)
        return exc.code
    except psycopg.errors.UndefinedTable:
        print("capctl: error: the database has no capacity schema: run `capctl db migrate`", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        print(f"capctl: error: database: {redact(_first_line(exc))}", file=sys.stderr)
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
