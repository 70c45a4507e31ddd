"""The dashboard's files: the charting library vendored as its README says, installed with the package, and
nothing the page loads from outside the service. (The page itself, in headless Chromium against the real
stack, is tests/test_api.py's dashboard test.)"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "api" / "dashboard"
VENDOR = DASHBOARD / "vendor"


def test_the_vendored_library_is_the_file_its_readme_names() -> None:
    readme = (VENDOR / "README.md").read_text()
    digest = hashlib.sha256((VENDOR / "echarts.min.js").read_bytes()).hexdigest()
    assert f"sha256 of `echarts.min.js`: `{digest}`" in readme
    version = re.search(r"Apache ECharts (\d+\.\d+\.\d+)", readme)
    assert version and f"echarts@{version[1]}" in readme
    head = (VENDOR / "echarts.min.js").read_text()[:2000]
    assert "Licensed to the Apache Software Foundation" in head
    # Its license, notice and those of what it bundles are served beside it.
    for name in ("LICENSE", "NOTICE", "LICENSE-d3", "LICENSE-zrender", "LICENSE-tslib"):
        assert (VENDOR / name).stat().st_size > 100, name
    assert "Apache License" in (VENDOR / "LICENSE").read_text()


def test_every_dashboard_file_is_package_data() -> None:
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["api"]
    files = [p for p in DASHBOARD.rglob("*") if p.is_file()]
    assert len(files) >= 10
    for path in files:
        assert any(path.relative_to(ROOT / "api").match(g) for g in globs), path
    assert "COPY api api" in (ROOT / "Dockerfile").read_text()


def test_the_page_loads_nothing_from_outside() -> None:
    html = (DASHBOARD / "index.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert "vendor/echarts.min.js" in sources and "app.js" in sources
    assert all(not re.match(r"^([a-z]+:)?//", s, re.I) for s in sources), sources
    for name in ("app.js", "style.css"):
        text = (DASHBOARD / name).read_text()
        assert not re.search(r"https?://|@import|url\(", text), name
