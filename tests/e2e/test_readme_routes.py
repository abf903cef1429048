"""README.md against the code: HTTP routes, metrics and the library example.

Cheap checks only (no servers, no Redis), as in test_readme.py.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any

from fastapi.routing import APIRoute

import service.routes
from mas_stream.settings import Settings
from tests.support.paths import ROOT
from tests.support.readme import code_blocks, section, table_rows

# --- HTTP API -------------------------------------------------------------------------------


def normalised(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def documented_routes() -> set[tuple[str, str]]:
    """(METHOD, path) pairs of the HTTP API table; a method carries over to the paths after it,
    and `[/versions/{v}]` stands for the path with and without that part."""
    routes = set()
    for row in table_rows(section("HTTP API")):
        method = None
        for code in re.findall(r"`([^`]+)`", row[0]):
            words = code.split()
            if len(words) == 2:
                method, code = words
            assert method, f"no method for {code}"
            optional = re.search(r"\[([^\]]+)\]", code)
            variants = (
                [code.replace(optional.group(0), ""), code.replace(optional.group(0), optional[1])]
                if optional
                else [code]
            )
            routes.update((method, normalised(variant)) for variant in variants)
    return routes


def served_routes() -> set[tuple[str, str]]:
    """What the app serves: its OpenAPI paths, plus the routes kept out of the schema."""
    from service.app import create_app

    app = create_app(Settings())  # builds routes only: nothing connects before startup
    routes = {
        (method.upper(), normalised(path))
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    for module in pkgutil.iter_modules(service.routes.__path__):
        router = importlib.import_module(f"service.routes.{module.name}").router
        for route in router.routes:
            if isinstance(route, APIRoute) and not route.include_in_schema:
                routes.update((method, normalised(route.path)) for method in route.methods)
    return routes


def test_http_table_lists_exactly_the_app_routes() -> None:
    actual, documented = served_routes(), documented_routes()
    assert len(actual) > 15
    assert documented - actual == set(), "documented but not served"
    assert actual - documented == set(), "served but not documented"


def test_task_upload_options_are_documented() -> None:
    from service.routes.tasks import OPTION_FIELDS

    row = next(r for r in table_rows(section("HTTP API")) if r[0].startswith("`POST /v1/tasks`"))
    for option in OPTION_FIELDS:
        assert f"`{option}`" in row[1], f"POST /v1/tasks option {option!r} not documented"


# --- Metrics --------------------------------------------------------------------------------


def test_documented_metrics_are_exported() -> None:
    """Each `mas_...` name of the Metrics section is declared in the code that exports it."""
    sources = "".join(
        (ROOT / name).read_text(encoding="utf-8")
        for name in (
            "service/metrics.py",
            "service/replica_metrics.py",
            "worker/importance_metrics.py",
            "worker/trainer.py",
        )
    )
    names = set(re.findall(r"`(mas_[a-z_]+)", section("Metrics")))
    assert len(names) > 10
    for name in names:
        base = re.sub(r"_total$", "", name)
        assert f'"{base}"' in sources, f"{name} is documented but not exported"


# --- Library --------------------------------------------------------------------------------


def test_library_example_runs() -> None:
    """The README's Python block, with small random data for the names it leaves to the reader."""
    import torch

    (block,) = [block for block in code_blocks("python") if block.startswith("import mas\n")]
    generator = torch.Generator().manual_seed(0)
    namespace: dict[str, Any] = {
        "x_unlabeled": torch.rand(8, 784, generator=generator),
        "x1": torch.rand(8, 784, generator=generator),
        "y1": torch.randint(0, 10, (8,), generator=generator),
    }
    exec(compile(block, "README.md", "exec"), namespace)
    assert set(namespace["model"].tasks) == {"t0", "t1"}
