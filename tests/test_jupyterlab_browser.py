"""The real front end: JupyterLab in headless Chromium renders the timeline, and a click on a
bar shows that event's payload in the panel (acceptance 5).

Starts `jupyter lab` on a free loopback port with a token and a temp root dir, opens a notebook
that loads the extension and records a run with `%%tracelab_record`, runs it through the menu
(Run → Run All Cells), waits for the Plotly chart, moves the mouse to the centre of the one red
bar and clicks there (Plotly listens on its drag layer, not on the bar's path), and reads the
panel. A widget that works in a kernel but renders nothing in JupyterLab (a missing front-end
extension, mismatched anywidget/ipywidgets) fails here.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from conftest import free_port
from test_notebook_kernel import STANDIN_SERVER

CHROMIUM = "/usr/bin/chromium"
HOSTILE = "<img src=x onerror=alert(1)>"



@pytest.fixture(autouse=True)
def _chromium_is_there() -> None:
    """Chromium is part of the test environment: missing, these tests fail, never skip."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is absent: install Debian's chromium " \
        "package (the Makefile does)"

SLOW_ERROR_SERVER = STANDIN_SERVER.replace(
    "    def _handle(self):\n",
    "    def _handle(self):\n"
    "        if self.path.startswith('/status/'):\n"
    "            import time; time.sleep(0.08)  # a wide bar, easy to hit\n")

NOTEBOOK_CELLS = [
    '''import os, tempfile
os.environ["TRACELAB_HOME"] = tempfile.mkdtemp(prefix="tl-browser-")
os.environ.pop("TRACELAB_REDIS_URL", None)
''' + SLOW_ERROR_SERVER + '''
%load_ext tracelab''',
    '''%%tracelab_record browser-wf --run-id browser-1
import requests
for i in range(5):
    requests.get(BASE + f"/inventory/{i}")
requests.post(BASE + "/status/503", json={"note": "''' + HOSTILE + '''"})
for i in range(2):
    requests.get(BASE + f"/after/{i}")''',
]


@pytest.fixture
def jupyter_lab(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "root"
    root.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in NOTEBOOK_CELLS]
    nbformat.write(nb, root / "timeline.ipynb")
    settings = tmp_path / "settings"  # user settings in a temp dir: fetch no news
    news = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ,
           "JUPYTER_DATA_DIR": str(tmp_path / "data"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    log = open(tmp_path / "jupyter.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("jupyter lab did not start:\n"
                                       + (tmp_path / "jupyter.log").read_text()[-3000:])
                time.sleep(0.2)
        # Start the notebook's kernel through the sessions API, so JupyterLab attaches to it
        # instead of asking which kernel to start.
        request = urllib.request.Request(
            f"{base}/api/sessions?token={token}", method="POST",
            headers={"Content-Type": "application/json"},
            data=json.dumps({"path": "timeline.ipynb", "name": "timeline.ipynb",
                             "type": "notebook", "kernel": {"name": "python3"}}).encode())
        urllib.request.urlopen(request, timeout=60)
        yield f"{base}/lab/tree/timeline.ipynb?token={token}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(tmp_path / "runtime", ignore_errors=True)


def test_click_on_a_bar_in_jupyterlab_shows_its_payload(jupyter_lab: str,
                                                        tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        console: list[str] = []
        page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        try:
            page.goto(jupyter_lab)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            # the kernel is attached once the status bar names it and says it is idle
            page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle")).wait_for(
                timeout=60_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            bars = page.locator(".js-plotly-plot .barlayer .trace")
            bars.first.wait_for(timeout=90_000)
            # trace 0 holds the ok bars, trace 1 the one error bar (the 503)
            error_bar = page.locator(".js-plotly-plot .barlayer .trace").nth(1) \
                .locator(".point path").first
            error_bar.wait_for(timeout=30_000)
            page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
            time.sleep(0.5)  # let the notebook's scroll settle before measuring
            box = error_bar.bounding_box()
            assert box is not None and box["width"] > 2, box
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            panel = page.locator(".widget-html-content .tl-box")
            panel.locator(".tl-head", has_text=re.compile("^Response$")).wait_for(timeout=30_000)
            text = panel.inner_text()
            assert "POST http://127.0.0.1:" in text and "/status/503" in text
            assert "status 503" in text  # the response
            assert HOSTILE in text  # shown as text ...
            assert panel.locator("img").count() == 0  # ... never as markup
            assert dialogs == []  # no alert() ran
        except Exception:
            page.screenshot(path=str(tmp_path / "jupyterlab.png"), full_page=True)
            print("screenshot:", tmp_path / "jupyterlab.png")
            print("\n".join(console[-40:]))
            raise
        finally:
            browser.close()
