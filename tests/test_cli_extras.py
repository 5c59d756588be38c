"""A command whose optional extra is missing prints the install command, not a traceback.

The CLI runs in a real subprocess where the extra's packages cannot be imported: a
`sitecustomize` on PYTHONPATH puts a finder first on `sys.meta_path` that raises
`ModuleNotFoundError` for them, exactly as Python does when a package is not installed.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port
from tracelab.cli.extras import missing_extra_message

ROOT = Path(__file__).resolve().parents[1]
SERVER = ("fastapi", "starlette", "uvicorn", "prometheus_client", "opentelemetry")
ALL_EXTRAS = (*SERVER, "mitmproxy", "IPython", "ipywidgets", "anywidget", "plotly",
              "jupyterlab", "nbclient")

BLOCKER = '''\
import sys
from importlib.abc import MetaPathFinder

BLOCKED = {blocked!r}


class _NotInstalled(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
'''


def run_without(tmp_path: Path, blocked: tuple[str, ...], *args: str
                ) -> subprocess.CompletedProcess[str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=set(blocked)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACELAB_", "MOCK_"))}
    env.update(PYTHONPATH=str(site), TRACELAB_HOME=str(tmp_path / "home"))
    return subprocess.run([sys.executable, "-m", "tracelab.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def hint(command: str, extra: str, package: str) -> str:
    return (f"tracelab {command}: needs the {extra!r} extra (Python package {package!r} is not "
            f"installed): pip install 'tracelab[{extra}]' (in a clone of the repository: "
            "make install)\n")


@pytest.mark.parametrize("command", [
    ["serve", "--no-ui"],
    ["up", "--no-ui", "--redis-url", "redis://127.0.0.1:1/0"],
    ["mocks", "--base-port", "0"],
    ["demo", "--no-serve", "--mocks-base-port", "0"],
])
def test_server_commands_without_the_server_extra(tmp_path: Path, command: list[str]) -> None:
    port = free_port()
    args = [*command, "--port", str(port)] if command[0] in ("serve", "up") else command
    result = run_without(tmp_path, SERVER, *args)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"tracelab {command[0]}: needs the 'server' extra")
    assert result.stderr.endswith("pip install 'tracelab[server]' (in a clone of the "
                                  "repository: make install)\n")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("package", ["fastapi", "prometheus_client", "opentelemetry"])
def test_serve_names_the_first_missing_package(tmp_path: Path, package: str) -> None:
    result = run_without(tmp_path, (package,), "serve", "--no-ui", "--port", str(free_port()))
    assert (result.returncode, result.stderr) == (1, hint("serve", "server", package))


def test_proxy_without_mitmproxy(tmp_path: Path) -> None:
    result = run_without(tmp_path, ("mitmproxy",), "proxy", "--port", str(free_port()))
    assert (result.returncode, result.stderr) == (1, hint("proxy", "proxy", "mitmproxy"))
    assert result.stdout == ""


def test_help_and_validate_need_no_extra(tmp_path: Path) -> None:
    assert run_without(tmp_path, ALL_EXTRAS, "--help").returncode == 0
    event = ROOT / "spec" / "examples" / "valid" / "http-plain.json"
    result = run_without(tmp_path, ALL_EXTRAS, "validate", str(event))
    assert (result.returncode, result.stdout) == (0, "1 event in 1 file: 1 valid, 0 invalid\n")


def test_a_module_outside_the_extras_is_not_explained_away() -> None:
    assert missing_extra_message("serve", ModuleNotFoundError("x", name="pyarrow")) is None
    assert missing_extra_message("serve", ModuleNotFoundError("x", name="tracelab.nope")) is None
    assert missing_extra_message("serve", ModuleNotFoundError("x")) is None
    assert missing_extra_message("mocks", ModuleNotFoundError("x", name="uvicorn.config")) == \
        hint("mocks", "server", "uvicorn").rstrip("\n")
