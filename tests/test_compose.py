"""docker-compose.yml and deploy/ without Docker: the compose file parses, every build context
and Dockerfile exists, every service's ports and env vars match the code (commands are parsed
by the real `tracelab` CLI parser), Prometheus scrapes the API, Grafana is provisioned from
deploy/grafana/, and the dashboard's PromQL only names metrics a live `tracelab up` (the api
service's command: an ingester + `serve`) exports on /metrics.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from conftest import RedisServer, free_port

from tracelab.cli import build_parser
from tracelab.mocks import VENDORS

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict = COMPOSE["services"]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tracelab.json"
EXPECTED = {"redis", "ingest", "api", "proxy", "prometheus", "grafana", "jupyterlab",
            *(f"mock-{v}" for v in VENDORS)}


def _ports(service: dict) -> dict[int, int]:
    """container port -> host port, from "host_ip:host:container" / "host:container"."""
    out = {}
    for spec in service.get("ports", []):
        parts = str(spec).split(":")
        out[int(parts[-1])] = int(parts[-2])
        if len(parts) == 3:
            assert parts[0] == "127.0.0.1", f"{spec}: publish on loopback only"
    return out


def _code_text() -> str:
    files = [*ROOT.glob("tracelab/**/*.py"), *ROOT.glob("mocks/**/*.py"),
             *ROOT.glob("examples/*.py")]
    return "\n".join(p.read_text() for p in files)


def test_compose_parses_and_has_every_service() -> None:
    assert EXPECTED <= set(SERVICES), EXPECTED - set(SERVICES)
    for name, service in SERVICES.items():
        assert "image" in service or "build" in service, name


def test_build_contexts_and_dockerfiles_exist() -> None:
    built = {n: s for n, s in SERVICES.items() if "build" in s}
    assert {"api", "ingest", "proxy", "jupyterlab", *(f"mock-{v}" for v in VENDORS)} <= \
        set(built)
    for name, service in built.items():
        build = service["build"]
        context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        dockerfile = context / (build.get("dockerfile", "Dockerfile")
                                if isinstance(build, dict) else "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        text = dockerfile.read_text()
        for line in text.splitlines():  # every COPY source exists in the context
            m = re.match(r"COPY\s+(?!--from)(\S+)\s", line)
            if m:
                assert (context / m.group(1)).exists(), f"{dockerfile}: COPY {m.group(1)}"


def test_tracelab_services_ports_match_the_cli() -> None:
    parser = build_parser()
    api = parser.parse_args(SERVICES["api"]["command"][1:])
    assert api.command == "up" and api.host == "0.0.0.0"
    assert _ports(SERVICES["api"]) == {api.port: 8000, api.ui_port: 3000, api.otlp_port: 4318}
    proxy = parser.parse_args(SERVICES["proxy"]["command"][1:])
    assert proxy.command == "proxy" and proxy.host == "0.0.0.0"
    assert _ports(SERVICES["proxy"]) == {proxy.port: 8888}
    assert parser.parse_args(SERVICES["ingest"]["command"][1:]).command == "ingest"
    assert _ports(SERVICES["redis"]) == {6379: 6379}
    for name in ("api", "ingest", "proxy", "agent"):
        env = SERVICES[name]["environment"]
        url = env.get("REDIS_URL") or env.get("TRACELAB_REDIS_URL")
        assert url == "redis://redis:6379/0", name
    jupyter = " ".join(SERVICES["jupyterlab"]["command"])
    port = int(re.search(r"--port=(\d+)", jupyter).group(1))
    assert _ports(SERVICES["jupyterlab"]) == {port: port}
    assert "--ip=0.0.0.0" in jupyter
    assert (ROOT / "notebooks").is_dir()


def test_mock_services_match_the_package() -> None:
    for vendor, spec in VENDORS.items():
        service = SERVICES[f"mock-{vendor}"]
        env = service["environment"]
        port = spec.port()
        assert int(env["MOCK_PORT"]) == port and env["MOCK_HOST"] == "0.0.0.0"
        assert _ports(service) == {port: port}
        dockerfile = (ROOT / service["build"]["dockerfile"]).read_text()
        assert f"EXPOSE {port}" in dockerfile and f"MOCK_PORT={port}" in dockerfile
        assert f"mocks/{vendor}/app.py" in dockerfile
        url = SERVICES["agent"]["environment"][f"MOCK_{vendor.upper()}_URL"]
        assert url == f"http://mock-{vendor}:{port}"


def test_every_env_var_of_our_services_is_read_by_the_code() -> None:
    code = _code_text()
    for name, service in SERVICES.items():
        if "build" not in service:
            continue
        for var in service.get("environment", {}):
            literal = f'"{var}"' in code or f"'{var}'" in code
            # the sample agent reads MOCK_<VENDOR>_URL for every vendor of the package
            per_vendor = 'f"MOCK_{name.upper()}_URL"' in code and var in {
                f"MOCK_{v.upper()}_URL" for v in VENDORS}
            assert literal or per_vendor, f"{name}: {var} is not read anywhere in the code"
    grafana = SERVICES["grafana"]["environment"]
    assert all(v.startswith("GF_") for v in grafana)
    assert _ports(SERVICES["grafana"]) == {int(grafana["GF_SERVER_HTTP_PORT"]): 4000}


def test_prometheus_scrapes_the_api_and_grafana_is_provisioned() -> None:
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    api_port = build_parser().parse_args(SERVICES["api"]["command"][1:]).port
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    job = jobs["tracelab-api"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"api:{api_port}"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["prometheus"]["volumes"]}
    assert (ROOT / mounts["/etc/prometheus/prometheus.yml"]).is_file()
    prom_port = int(re.search(r":(\d+)$", " ".join(SERVICES["prometheus"]["command"])).group(1))

    gmounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["grafana"]["volumes"]}
    provisioning = ROOT / gmounts["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == f"http://prometheus:{prom_port}"
    uid = datasource["datasources"][0]["uid"]
    providers = yaml.safe_load((provisioning / "dashboards/tracelab.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert gmounts[path] == "./deploy/grafana/dashboards"
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "tracelab" and dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])


def _dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = {m for e in exprs for m in re.findall(r"\b(tracelab_[a-z0-9_]+)", e)}
    assert names
    return names


# One traced step recorded in embedded mode, so the per-workflow and per-target series exist.
RECORD_SCRIPT = """
import tracelab
tracelab.init(workflow_name="compose-check", service_name="compose-test", run_id="run-1")

@tracelab.trace
def step():
    return 1

step()
assert tracelab.flush(10)
tracelab.shutdown()
"""


@pytest.mark.slow
def test_dashboard_metric_names_are_exported_by_a_live_api(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACELAB_")}
    env["TRACELAB_HOME"] = str(tmp_path / "home")
    subprocess.run([sys.executable, "-c", RECORD_SCRIPT], check=True, env=env, cwd=ROOT,
                   timeout=60)
    redis = RedisServer(tmp_path)
    redis.start()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tracelab.cli", "up", "--port", str(port),
                             "--no-ui", "--redis-url", redis.url], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        text = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                requests.get(f"http://127.0.0.1:{port}/api/workflows", timeout=2)
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                if "tracelab_ingest_lag" in text:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.3)
        exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                    if line and not line.startswith("#")}
        missing = _dashboard_metrics() - exported
        assert not missing, f"dashboard queries metrics /metrics does not export: {missing}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        redis.stop()


# -- the optional object-store profile ("s3") ------------------------------------------------

S3_PROFILE = {"minio", "minio-init"}
S3_ENV_FILE = ROOT / "deploy" / "s3.env"
STORE_USERS = ("ingest", "api", "jupyterlab")
_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def _env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a Compose env file (comments and blank lines skipped)."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _interpolate(value: object, variables: dict[str, str]) -> str:
    """What Compose makes of `${NAME}`, `${NAME:-default}` and `$$` with `variables` set."""
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return variables.get(match.group(1)) or (match.group(2) or "")
    return _INTERPOLATION.sub(one, str(value))


def _service_env(name: str, variables: dict[str, str]) -> dict[str, str]:
    return {k: _interpolate(v, variables) for k, v in SERVICES[name]["environment"].items()}


def test_the_s3_profile_is_optional_and_leaves_the_default_services_as_they_were(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracelab.store.layout import resolve_layout

    profiled = {name for name, service in SERVICES.items() if "profiles" in service}
    assert profiled == S3_PROFILE
    assert all(SERVICES[name]["profiles"] == ["s3"] for name in profiled)
    for name, service in SERVICES.items():
        if name in profiled:
            continue
        dependencies = service.get("depends_on") or {}
        if isinstance(dependencies, list):  # the short form cannot say `required: false`
            assert not profiled & set(dependencies), name
            continue
        for dependency, condition in dependencies.items():
            if dependency in profiled:  # skipped by Compose when the profile is off
                assert condition == {"condition": "service_completed_successfully",
                                     "required": False}, name
    # Profile off, nothing set: the store variables are empty, which TraceLab reads as unset,
    # so the store is still $TRACELAB_HOME/store on the shared volume.
    for name in STORE_USERS:
        env = _service_env(name, {})
        assert env["TRACELAB_HOME"] == "/data"
        for variable in ("TRACELAB_STORE", "TRACELAB_S3_ENDPOINT", "AWS_ACCESS_KEY_ID",
                         "AWS_SECRET_ACCESS_KEY"):
            assert env[variable] == "", (name, variable)
        for variable, value in env.items():
            monkeypatch.setenv(variable, value)
        monkeypatch.setenv("TRACELAB_HOME", str(tmp_path))
        layout = resolve_layout()
        assert layout.is_local and layout.root == str(tmp_path / "store")


def test_the_s3_profile_points_ingest_api_and_notebooks_at_the_minio_bucket() -> None:
    variables = _env_file(S3_ENV_FILE)
    assert variables["COMPOSE_PROFILES"] == "s3"
    minio, init = SERVICES["minio"], SERVICES["minio-init"]
    credentials = _service_env("minio", variables)
    assert _service_env("minio-init", variables) == credentials
    port = int(re.search(r"--address :(\d+)", " ".join(minio["command"])).group(1))
    console = int(re.search(r"--console-address :(\d+)", " ".join(minio["command"])).group(1))
    assert _ports(minio) == {port: port, console: console}
    assert "minio-data" in COMPOSE["volumes"]
    script = _interpolate(" ".join(init["command"]), variables)
    assert f"mc alias set store http://minio:{port} " in script
    bucket = re.search(r"mc mb --ignore-existing store/(\S+)", script).group(1)
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert init["restart"] == "no"
    for name in STORE_USERS:
        env = _service_env(name, variables)
        assert env["TRACELAB_STORE"].startswith(f"s3://{bucket}/"), name
        assert env["TRACELAB_S3_ENDPOINT"] == f"http://minio:{port}", name
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == \
            (credentials["MINIO_ROOT_USER"], credentials["MINIO_ROOT_PASSWORD"]), name


def test_the_s3_profile_environment_stores_and_serves_from_an_s3_server(s3, tmp_path) -> None:
    """The ingest and api services' own environment with the s3 profile on, only the
    addresses of minio and redis swapped for a moto_server and a redis-server on loopback (and
    a prefix of this test's own): `tracelab ingest` stores into the bucket and `stats` reads it."""
    from uuid import uuid4

    from event_factory import make_runs, publish

    variables = _env_file(S3_ENV_FILE)
    bucket_and_prefix = _service_env("ingest", variables)["TRACELAB_STORE"]
    assert bucket_and_prefix.startswith(f"s3://{s3.bucket}/")
    store = f"{bucket_and_prefix}-{uuid4().hex}"
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        events = make_runs(workflows=1, runs=3, events_per_run=4)
        publish(redis.client(), events)
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("TRACELAB_", "AWS_", "REDIS_URL"))}

        def run(service: str, *extra: str) -> str:
            env = {**base, **_service_env(service, variables), "REDIS_URL": redis.url,
                   "TRACELAB_S3_ENDPOINT": s3.url, "TRACELAB_STORE": store,
                   "TRACELAB_HOME": str(tmp_path / service)}
            command = SERVICES[service]["command"] if service == "ingest" else ["tracelab"]
            done = subprocess.run([sys.executable, "-m", "tracelab.cli", *command[1:], *extra],
                                  env=env, cwd=ROOT, capture_output=True, timeout=120)
            assert done.returncode == 0, done.stderr.decode()
            return done.stdout.decode()

        run("ingest", "--once")
        assert re.search(rf"events\s+{len(events)}\b", run("api", "stats"))
    finally:
        redis.stop()
