"""`/docs` needs nothing but the service: every asset it references is served by the service
itself, and a real browser, cut off from everything but 127.0.0.1, renders the operations."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from mas_stream.store.keys import Keys
from tests.support.api import api_settings
from tests.support.serving import run_api

CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Every request to another host goes to a closed port (loopback is never proxied) and no other
# name resolves, so only assets the service serves can load.
OFFLINE_FLAGS = [
    "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[str]:
    """No model: the docs are there before the first version."""
    keys = Keys(prefix=f"test-docs-{uuid.uuid4().hex[:8]}")
    with run_api(api_settings(tmp_path_factory.mktemp("docs"), redis_url, keys)) as url:
        yield url


def referenced_urls(html: str) -> list[str]:
    """Stylesheets, scripts, icons and the OpenAPI document the page loads."""
    urls = re.findall(r"""(?:href|src)=["']([^"']+)["']""", html)
    urls += re.findall(r"""url:\s*'([^']+)'""", html)
    return urls


def test_docs_reference_only_assets_the_service_serves(base: str) -> None:
    page = httpx.get(f"{base}/docs")
    assert page.status_code == 200
    urls = referenced_urls(page.text)
    assert len(urls) == 4, urls  # CSS, icon, JS, /openapi.json
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and url.startswith("/"), url
        asset = httpx.get(urljoin(base, url))
        assert asset.status_code == 200, url
        expected = CONTENT_TYPES[Path(parts.path).suffix]
        assert asset.headers["content-type"].startswith(expected), (url, asset.headers)
        assert len(asset.content) > 100, url


def test_redoc_is_not_served_from_a_cdn(base: str) -> None:
    assert httpx.get(f"{base}/redoc").status_code == 404


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_a_browser_without_network_renders_the_operations(base: str, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        *OFFLINE_FLAGS,
        "--virtual-time-budget=30000",
        "--dump-dom",
        f"{base}/docs",
    ]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    operations = re.findall(r'class="opblock opblock-(\w+)', dom)
    assert len(operations) > 15, dom[-2000:]
    assert "delete" in operations
    for path in ("/v1/predict", "/v1/models/{version}", "/v2/models/{name}/infer"):
        assert f'data-path="{path}"' in dom, path
