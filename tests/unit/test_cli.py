"""The command line's own words: --version, help for everything, the command's usage on a
mistake, refusals that create nothing."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from capctl import cli


def parsers(parser: argparse.ArgumentParser, path: str = "capctl") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:  # argparse keeps its tree here; there is no public walk
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, f"{path} {name}")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("capctl ")


def test_every_command_and_option_says_what_it_is_for() -> None:
    missing = []
    for path, parser in parsers(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{path} {c.dest}" for c in action._choices_actions if not c.help]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_top_level_help_names_the_database_and_cites_no_outside_document(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "DATABASE_URL" in text and "capctl verify, capctl slot show" in text
    assert "contract" not in text.lower()


@pytest.mark.parametrize("argv", [["verify", "--foo"], ["db", "up", "--foo"], ["slot", "show", "a", "b", "c", "--x"]])
def test_an_unknown_option_shows_the_commands_own_usage(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    command = " ".join(a for a in argv if not a.startswith("-"))
    assert exit_.value.code == 2
    assert err.startswith(f"usage: capctl {' '.join(argv[:2] if argv[0] == 'db' else argv[:1])}")
    assert "unrecognized arguments" in err and command


def test_openapi_refuses_a_directory_that_does_not_exist(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "nowhere" / "x.json"
    assert cli.main(["openapi", "--path", str(target)]) == 2
    err = capsys.readouterr().err
    assert err == f"capctl: error: {target.parent} is not a directory: create it first, or give another --path\n"
    assert not target.parent.exists()


@pytest.mark.parametrize(("n", "words"), [(0, "0 slots"), (1, "1 slot"), (2, "2 slots")])
def test_counts_take_the_right_number(n: int, words: str) -> None:
    from capctl.text import plural

    assert plural(n, "slot") == words
