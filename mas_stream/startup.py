"""Why a process cannot start, said in one line per problem a person can act on: a setting that
does not validate (named as the user wrote the variable), a port that cannot be listened on.
Restarting such a process changes nothing, so the CLI exits with CANNOT_START, and
`mas-stream serve` does not restart a part that exits with it."""

from __future__ import annotations

import errno
import os
import re
import socket
from typing import Any, Final

from pydantic import AliasChoices, ValidationError
from pydantic_settings import SettingsError

from mas_stream.settings import Settings

# EX_CONFIG of sysexits.h: a configuration error, not a crash.
CANNOT_START: Final = 78
_FIELD_IN_SETTINGS_ERROR: Final = re.compile(r'field "(\w+)"')


class CannotStart(RuntimeError):
    """Its text is the whole message for the user: one line per problem, no traceback."""


def load_settings(**overrides: Any) -> Settings:
    """The settings, or CannotStart with one line per bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        lines = [_problem(item["loc"], item["msg"], item.get("input")) for item in error.errors()]
        raise CannotStart("\n".join(lines)) from None
    except SettingsError as error:
        # pydantic-settings decodes list settings (MAS_HIDDEN) as JSON before validating.
        found = _FIELD_IN_SETTINGS_ERROR.search(str(error))
        field = found.group(1) if found else "?"
        raise CannotStart(_problem((field,), f"is not valid JSON ({error.__cause__})")) from None


def variable_of(field: str) -> str:
    """The environment variable a field is read from, spelled as this environment has it (the
    names are case-insensitive); the first of its names when none is set."""
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, AliasChoices):
        names = [str(choice) for choice in alias.choices]
    elif info is None:
        names = [field]  # already a variable name: pydantic reports aliased fields by alias
    else:
        names = [f"{Settings.model_config.get('env_prefix', '')}{field}".upper()]
    written = {name.upper(): name for name in os.environ}
    return next((written[name.upper()] for name in names if name.upper() in written), names[0])


def _problem(location: tuple[int | str, ...], message: str, given: object = None) -> str:
    variable = variable_of(str(location[0]))
    value = os.environ.get(variable, given)
    item = "".join(f"[{part}]" for part in location[1:])
    where = f" item {item}:" if item else ""
    return f"invalid setting {variable}={value!r}:{where} {message}"


def cannot_listen(
    host: str, port: int, setting: str, error: BaseException, choose: str = ""
) -> CannotStart:
    """The one line for a port this process cannot listen on, naming the setting that chose it;
    `choose` is how else to choose it (a flag)."""
    reason = (getattr(error, "strerror", None) or str(error)).lower()
    remedy = f"set {setting} to a free port{choose}"
    if getattr(error, "errno", None) == errno.EADDRINUSE:
        remedy = f"another process listens there (another mas-stream serve?): stop it, or {remedy}"
    return CannotStart(f"cannot listen on {host}:{port} ({setting}): {reason}; {remedy}")


def listen_socket(host: str, port: int, setting: str, choose: str = "") -> socket.socket:
    """A TCP socket bound to host:port as uvicorn binds one (SO_REUSEADDR), not yet listening."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, OverflowError) as error:
        raise cannot_listen(host, port, setting, error, choose) from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except (OSError, OverflowError) as error:
        sock.close()
        raise cannot_listen(host, port, setting, error, choose) from None
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a process about to start."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
