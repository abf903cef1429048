"""`mas-stream models [--activate V | --delete V] [--json]`: the running service's model versions,
and what an operator does with them: serve another one (a rollback, or a version the retention
gate held) or delete one. Each action is the API's own (`POST /v1/models/{v}/activate`,
`DELETE /v1/models/{v}`), so its refusals are the service's words."""

from __future__ import annotations

import argparse

from mas_stream.client import ServiceClient
from mas_stream.listings import add_listing_options, aligned, local_minute, run_listing
from mas_stream.records.version import ListedVersion, ModelListing

_COLUMNS = ("", "version", "parent", "task", "lambda", "omega", "gate", "created", "accuracy")
_GATE = {True: "passed", False: "held", None: "-"}


def _version(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a version number (1, 2, ...), got {text!r}")
    return int(text)


def configure(parser: argparse.ArgumentParser) -> None:
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--activate",
        type=_version,
        metavar="V",
        help="Serve version V on every replica: a rollback, or a version the retention gate held.",
    )
    action.add_argument(
        "--delete",
        type=_version,
        metavar="V",
        help="Delete version V, its files and its traffic Ω (refused, saying why, for the "
        "current version and for one that another version or an unfinished job builds on).",
    )
    add_listing_options(parser)


def run(args: argparse.Namespace) -> int:
    def act_then_list(client: ServiceClient) -> ModelListing:
        if args.activate is not None:
            client.activate(args.activate)
        if args.delete is not None:
            client.delete_version(args.delete)
        return client.models()

    return run_listing(args, act_then_list, format_listing)


def format_listing(listing: ModelListing) -> str:
    """One line per version, oldest first, `*` on the current one; then what the replica that
    answered serves, when that is not the current version yet."""
    if not listing.versions:
        return "no model versions yet: the first succeeded training job publishes v1"
    lines = aligned([_COLUMNS, *(_row(version) for version in listing.versions)])
    if listing.served != listing.current:
        served = "nothing" if listing.served is None else f"v{listing.served}"
        lines.append(
            f"(the replica that answered still serves {served}; replicas follow within "
            "MAS_MODEL_POLL_SECONDS)"
        )
    return "\n".join(lines)


def _row(version: ListedVersion) -> tuple[str, ...]:
    info = version.info
    omega = f"{info.omega.source} {info.omega.samples}" if info.omega.samples else info.omega.source
    accuracy = ", ".join(f"{task} {value:.3f}" for task, value in version.metrics.accuracy.items())
    return (
        "*" if version.current else "",
        f"v{version.version}",
        "-" if version.parent is None else f"v{version.parent}",
        info.task,
        "-" if info.lam is None else f"{info.lam:g}",
        omega,
        _GATE[info.retention_gate_passed],
        local_minute(version.created_at),
        accuracy or "-",
    )
