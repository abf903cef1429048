"""`/docs` from the service itself: Swagger UI's JavaScript and CSS come from the
`swagger-ui-bundle-v2` package, not a CDN, so the docs render on a host without internet.

FastAPI's documented self-hosting pattern: the app is built with `docs_url=None` and
`redoc_url=None` (ReDoc has no packaged build, so it is left out), and this module adds the
`/docs` page with local asset URLs and mounts the package's files under `/docs/assets`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"


def install_docs(app: FastAPI) -> None:
    app.mount(ASSETS_PATH, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        """Behind a proxy that strips a prefix (`root_path`), every URL keeps that prefix."""
        root = request.scope.get("root_path", "").rstrip("/")
        assert app.openapi_url is not None
        return get_swagger_ui_html(
            openapi_url=root + app.openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-32x32.png",
        )
