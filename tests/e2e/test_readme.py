"""README.md against the code: the setup commands, the settings table and the CLI invocations.

Cheap checks only (no servers, no Redis): each one fails as soon as the README documents
something the code does not have, or the code grows something the README does not document.
The HTTP routes, metrics and library code are checked in test_readme_routes.py.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices

from mas_stream import cli
from mas_stream.settings import Settings
from tests.support.readme import README, code_blocks, section, table_rows


def test_readme_opens_with_the_two_setup_commands() -> None:
    first = code_blocks(r"\w*")[0].splitlines()
    assert [line.split("#")[0].strip() for line in first[:2]] == ["make serve", "make test"]
    assert README.index("```") < README.index("\n## "), "the setup block must come first"


# --- Settings -------------------------------------------------------------------------------


def env_names(name: str) -> list[str]:
    """The environment variables pydantic-settings reads for a field of Settings."""
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    if isinstance(alias, str):
        return [alias]
    return [f"{Settings.model_config.get('env_prefix', '')}{name}".upper()]


def documented_settings() -> dict[str, tuple[str, str]]:
    """variable -> (default cell, meaning cell) from the README's settings table."""
    documented: dict[str, tuple[str, str]] = {}
    for variable, default, meaning in table_rows(section("Settings")):
        name = variable.strip("`")
        assert name not in documented, f"{name} is documented twice"
        documented[name] = (default.strip("`"), meaning)
    return documented


def field_of(variable: str) -> str:
    fields = [name for name in Settings.model_fields if variable in env_names(name)]
    assert fields, f"README documents {variable}, but no Settings field reads it"
    return fields[0]


def test_settings_table_documents_exactly_the_settings_fields() -> None:
    documented = {field_of(variable) for variable in documented_settings()}
    undocumented = {env_names(name)[0] for name in Settings.model_fields if name not in documented}
    assert not undocumented, f"Settings fields missing from the README table: {undocumented}"
    assert len(documented) == len(documented_settings()), "one field documented twice"


def readme_value(cell: str) -> Any:
    if cell == "unset":
        return None
    try:
        return json.loads(cell)
    except ValueError:
        return cell


def test_settings_table_defaults_are_the_code_defaults() -> None:
    for variable, (default, _) in documented_settings().items():
        code = Settings.model_fields[field_of(variable)].default
        code = str(code) if isinstance(code, Path) else code
        assert readme_value(default) == code, f"{variable}: README {default!r}, code {code!r}"


def other_value(name: str) -> tuple[str, Any]:
    """An environment string valid for the field, and the value it must parse to."""
    field = Settings.model_fields[name]
    annotation = field.annotation
    choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()
    if choices:
        other = next(choice for choice in choices if choice != field.default)
        return other, other
    if annotation is bool:
        return "true", True
    if annotation is int:
        return "7", 7
    if annotation is float:
        return "0.5", 0.5
    if annotation == list[int]:
        return "[3, 2]", [3, 2]
    if annotation is Path:
        return "readme-dir", Path("readme-dir")
    if name == "model_spec":  # a spec that builds
        spec = json.dumps({"family": "mlp", "input_shape": [3]})
        return spec, spec
    return "readme-value", "readme-value"


def test_every_documented_variable_reaches_its_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set alone, each documented variable changes its field (and nothing is misspelt)."""
    for variable in documented_settings():
        name = field_of(variable)
        text, expected = other_value(name)
        with monkeypatch.context() as patch:
            for other in env_names(name):
                patch.delenv(other, raising=False)
            patch.setenv(variable, text)
            assert getattr(Settings(), name) == expected, variable


def test_importance_method_values_are_documented() -> None:
    (_, meaning) = documented_settings()["MAS_IMPORTANCE_METHOD"]
    method = Settings.model_fields["importance_method"].annotation
    for value in typing.get_args(method):
        assert f"`{value}`" in meaning, f"MAS_IMPORTANCE_METHOD value {value!r} not documented"


# --- CLI ------------------------------------------------------------------------------------


def standalone_parser(path: tuple[str, ...]) -> argparse.ArgumentParser:
    """The options of one subcommand, configured the way cli.build_parser configures them."""
    parser = argparse.ArgumentParser(prog=" ".join(path))
    importlib.import_module(cli.COMMANDS[path][0]).configure(parser)
    return parser


def command_path(words: list[str]) -> tuple[str, ...]:
    for length in (2, 1):
        if tuple(words[:length]) in cli.COMMANDS:
            return tuple(words[:length])
    raise AssertionError(f"README shows `mas-stream {' '.join(words)}`: no such subcommand")


PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")


def sample(action: argparse.Action, word: str) -> str:
    """A value the option accepts in place of a placeholder such as N or U; others are kept."""
    if not PLACEHOLDER.fullmatch(word):
        return word
    if action.choices:
        return str(next(iter(action.choices)))
    for candidate in ("1", "x"):
        try:
            if action.type is not None:
                action.type(candidate)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            continue
        return candidate
    return word


def concrete(usage: str) -> list[str]:
    """`submit NAME FILE [--epochs N]` -> argv; fails on an unknown subcommand or option."""
    words = shlex.split(usage.replace("[", " ").replace("]", " "))
    path = command_path(words)
    options = {
        option: action
        for action in standalone_parser(path)._actions
        for option in action.option_strings
    }
    argv = list(path)
    rest = iter(words[len(path) :])
    for word in rest:
        if word.startswith("-"):
            assert word in options, f"`mas-stream {usage}`: {' '.join(path)} has no {word}"
            argv.append(word)
            if options[word].nargs != 0:
                argv.append(sample(options[word], next(rest)))
        else:
            argv.append(word)
    return argv


def parses(argv: list[str]) -> argparse.Namespace:
    try:
        return cli.build_parser().parse_args(argv)
    except SystemExit as error:
        raise AssertionError(f"the CLI refuses `mas-stream {shlex.join(argv)}`") from error


@pytest.fixture(scope="module")
def shell_invocations() -> list[list[str]]:
    """Every `mas-stream ...` line of the README's shell blocks, as argv (comments dropped)."""
    found = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if "mas-stream" not in line.split("#")[0]:
                continue
            words = shlex.split(line, comments=True)
            if words and Path(words[0]).name == "mas-stream":
                found.append(words[1:])
    return found


def test_readme_shell_commands_parse(shell_invocations: list[list[str]]) -> None:
    assert len(shell_invocations) >= 2
    for argv in shell_invocations:
        parses(argv)


def test_commands_table_synopses_parse() -> None:
    """Each synopsis, placeholders filled in, is a command line the CLI accepts."""
    synopses = [
        usage
        for row in table_rows(section("Commands"))
        for usage in re.findall(r"`mas-stream ([^`]+)`", row[0])
    ]
    assert len(synopses) >= len(cli.COMMANDS)
    for usage in synopses:
        parses(concrete(usage))


def test_inline_mentions_name_real_subcommands_and_options() -> None:
    mentions = re.findall(r"`mas-stream ([^`]+)`", README)
    assert mentions
    for usage in mentions:
        concrete(usage)


def test_every_subcommand_is_in_the_commands_table() -> None:
    table = " ".join(cell for row in table_rows(section("Commands")) for cell in row)
    for path in cli.COMMANDS:
        assert f"`mas-stream {' '.join(path)}" in table, f"mas-stream {' '.join(path)}"


def test_every_option_is_in_the_commands_table() -> None:
    table = " ".join(row[0] for row in table_rows(section("Commands")))
    for path in cli.COMMANDS:
        for action in standalone_parser(path)._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in table, f"mas-stream {' '.join(path)} {option} not documented"
