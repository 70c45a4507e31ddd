"""docker-compose.yml and the Dockerfile (no Docker engine on these machines: checked by parsing them).

Every app service runs a command the `ai-analytics` CLI accepts, and the image copies every package the
project installs, so `docker compose up` starts the system the README describes."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent


def test_compose_services_run_commands_the_cli_accepts() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "redis", "worker", "api", "demo"} <= set(services)
    parser = build_parser()
    apps = {name: s for name, s in services.items() if s.get("image", "").startswith("ai-analytics")}
    assert {"worker", "api", "demo"} <= set(apps)
    for name, service in apps.items():
        args = parser.parse_args(service["command"])  # exits (fails the test) on an unknown command
        assert args.command, name
        env = service.get("environment", {})
        assert "AIA_KAFKA_BOOTSTRAP" in env and "AIA_REDIS_URL" in env, name


def test_the_image_copies_every_installed_package() -> None:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    for pattern in packages:
        name = pattern.rstrip("*")
        assert f"COPY {name} {name}" in dockerfile, name


def test_the_cluster_profile_is_three_brokers_and_a_redis_cluster() -> None:
    from tables.connections import RedisTarget

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    cluster = {name: s for name, s in services.items() if "cluster" in s.get("profiles", [])}
    brokers = [s for name, s in cluster.items() if name.startswith("kafka-")]
    assert sorted(b["environment"]["KAFKA_NODE_ID"] for b in brokers) == ["1", "2", "3"]
    assert len({b["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] for b in brokers}) == 1
    assert all(b["environment"]["KAFKA_MIN_INSYNC_REPLICAS"] == "2" for b in brokers)
    # A dead leader is fenced after 3 s, as on `stack up --cluster` (infra/kafka.py).
    assert all(b["environment"]["KAFKA_BROKER_SESSION_TIMEOUT_MS"] == "3000" for b in brokers)
    nodes = [s for name, s in cluster.items() if name.startswith("redis-") and name != "redis-cluster-init"]
    assert len(nodes) == 9 and all("--cluster-enabled" in n["command"] for n in nodes)  # two replicas a primary
    assert "--cluster-replicas 2" in " ".join(cluster["redis-cluster-init"]["command"])
    parser = build_parser()
    for name in ("cluster-worker", "cluster-api", "cluster-demo", "cluster-topics"):
        env = cluster[name]["environment"]
        assert parser.parse_args(cluster[name]["command"]).command, name
        assert len(RedisTarget.from_url(env["AIA_REDIS_URL"]).cluster_nodes) == 9, name
        assert len(env["AIA_KAFKA_BOOTSTRAP"].split(",")) == 3 and env["AIA_TOPIC_REPLICATION"] == "3", name


def test_the_readme_quotes_only_figures_of_the_latest_benchmark_run() -> None:
    """Every figure README.md gives (events/s, counts, ratios) is one of docs/BENCHMARKS.md, the latest
    `bench.run`: a new run that changes a figure makes this fail until the README says the new one."""
    readme = (ROOT / "README.md").read_text()
    bench = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    figures = re.findall(r"(?<![\d.,])(\d{1,3}(?:,\d{3})+|0\.\d{2,3})(?![\d,])", readme)
    assert figures, "the README quotes no figure: the benchmark paragraph moved?"
    missing = sorted({f for f in figures if not re.search(rf"(?<![\d.,]){re.escape(f)}(?![\d,])", bench)})
    assert missing == [], f"README.md quotes figures docs/BENCHMARKS.md does not hold: {missing}"


def test_the_lua_scripts_are_package_data() -> None:
    """Every script the code loads (tables/scripts.load: `<package>/lua/<name>.lua`) is installed with its
    package, and the image copies the package it is in."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    scripts = sorted(ROOT.glob("*/lua/*.lua"))
    assert {p.parent.parent.name for p in scripts} == {"tables", "agents"}
    for path in scripts:
        package = path.parent.parent.name
        assert any(path.relative_to(ROOT / package).match(g) for g in data.get(package, [])), path
        assert f"COPY {package} {package}" in (ROOT / "Dockerfile").read_text()


def test_every_cli_module_imports_where_the_package_is_installed(tmp_path: Path) -> None:
    """The `ai-analytics` command runs from anywhere: its modules import only installed packages (bench/ and
    tests/ are not installed; an import of them works inside the checkout only)."""
    modules = sorted(f"cli.{p.stem}" for p in (ROOT / "cli").glob("*.py") if p.stem != "__init__")
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    done = subprocess.run([sys.executable, "-c", code, *modules], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
