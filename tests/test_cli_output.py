"""Every list and show command of ``fdo`` takes ``-o table|json|yaml`` (and ``--json``),
every list pages (``--limit``, ``--offset``, ``--all``), and every command and option
``docs/cli.md`` names exists."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from typing import Any

import typer

from fdo_cli.main import app
from tests.conftest import REPO

ROOT: Any = typer.main.get_command(app)
LISTS = {"list", "onboardings"}
SHOWS = {"show", "status"}


def commands(command: Any = ROOT, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    subs = getattr(command, "commands", None)
    if isinstance(subs, dict):
        for name, sub in subs.items():
            yield from commands(sub, (*path, name))
    else:
        yield path, command


def options(command: Any) -> set[str]:
    return {opt for param in command.params for opt in getattr(param, "opts", [])}


def test_every_list_and_show_command_has_output_formats_and_lists_page() -> None:
    seen = {path for path, _ in commands() if path[-1] in LISTS | SHOWS}
    assert {
        ("owner", "devices", "list"),
        ("owner", "rollouts", "show"),
        ("rendezvous", "registrations", "list"),
    } <= seen
    for path, command in commands():
        if path[-1] in LISTS | SHOWS:
            assert {"-o", "--output", "--json"} <= options(command), path
        if path[-1] in LISTS:
            assert {"--limit", "--offset", "--all"} <= options(command), path


def test_the_commands_and_options_docs_cli_names_exist() -> None:
    text = (REPO / "docs" / "cli.md").read_text()
    lines = re.findall(r"`(fdo [^`]+)`", text)
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif in_code and (line.startswith("fdo ") or line.startswith("$ fdo ")):
            lines.append(line.removeprefix("$ ").split(" #")[0].split(" | ")[0])
    assert len(lines) > 15
    checked = 0
    for line in lines:
        for variant in line.split(", "):  # "fdo owner vouchers list [--state S]`, `vouchers show GUID"
            argv = shlex.split(re.sub(r"\[|\]|\.\.\.", " ", variant))[1:]
            command: Any = ROOT
            for word in argv:
                subs = getattr(command, "commands", None)
                if not isinstance(subs, dict) or word.startswith("-"):
                    break
                assert word in subs, f"{variant}: no command {word!r}"
                command = subs[word]
            names = options(command) | {"--install-completion", "--show-completion"}
            for word in argv:
                if word.startswith("-") and word not in ("-", "--"):
                    assert word.split("=")[0] in names, f"{variant}: no option {word}"
            checked += 1
    assert checked > 15


def test_cells_are_text_not_markup_and_lines_have_no_trailing_spaces(capsys: Any) -> None:
    from fdo_cli.output import col, render, table

    rows: list[dict[str, Any]] = [
        {"step": "error[bootc-switch]: [bold]x", "n": 1},
        {"step": "two\nlines", "n": None},
    ]
    render(table(rows, [col("STEP", "step"), col("N", "n", "right")], title="failing [red]"), "3 of 9")
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "failing [red]",
        "STEP                          N",
        "error[bootc-switch]: [bold]x  1",
        "two\\nlines                    -",
        "",
        "3 of 9",
    ]
