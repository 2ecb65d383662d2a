"""The query demo in a real browser: JupyterLab on 127.0.0.1, headless Chromium driven by Playwright.

It types a query into the running notebook's text box and checks that result rows with audio
players appear; a screenshot lands in results/screenshots/. Skipped only where no Chromium is
installed (CI installs it: see scripts/bootstrap.sh).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from salsa_lib import datasets, paths, stage1
from salsa_lib.config import DataConfig, Stage1Config

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, process, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)  # polling a starting server: bounded by the deadline
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout} s")


def _run_all_cells(page, attempts: int = 3) -> None:
    """Menu Run > Run All Cells, repeated if the kernel was not connected yet and nothing started."""
    started = page.locator(".jp-InputPrompt", has_text="[1]").or_(page.locator(".jp-InputPrompt", has_text="[*]"))
    for _ in range(attempts):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            started.first.wait_for(timeout=20_000)
            return
        except Exception:
            page.keyboard.press("Escape")
    raise AssertionError(f"JupyterLab did not start executing the notebook after {attempts} tries")


@pytest.fixture
def trained_tiny(tmp_path, monkeypatch):
    """SALSA_HOME with a miniature synthetic set and one trained member, as profile 'tiny'."""
    home = tmp_path / "home"
    monkeypatch.setenv("SALSA_HOME", str(home))
    data = DataConfig(n_train_clips=8, n_val_clips=4, n_test_clips=6, clip_seconds=1.0, source_sample_rate=16000)
    datasets.fetch(data, progress=False)
    datasets.load_splits(data, progress=False)
    datasets.save_data_config(data)
    stage1.train_members(Stage1Config(members=1, passt_width=64, passt_depth=1, passt_heads=2, text_trainable_layers=1,
                                      embed_dim=32, train_seconds=1.0, eval_seconds=1.0, window_seconds=1.0,
                                      batch_size=10, eval_batch_size=4, epochs=1, warmup_epochs=0.5,
                                      rampdown_start=0.5, rampdown_stop=1.0), data, progress=False)
    return home


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no Chromium installed (apt-get install chromium)")
def test_query_demo_in_jupyterlab(trained_tiny, tmp_path):
    from playwright.sync_api import sync_playwright

    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(paths.notebooks_dir() / "05_query_demo.ipynb", served)  # never let the browser touch ours
    port, token = _free_port(), "salsa-test-token"
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={served}", "--ServerApp.open_browser=False",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", "--allow-root"],
        env={**os.environ, "SALSA_HOME": str(trained_tiny), "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter_config")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    screenshot = paths.REPO_ROOT / "results" / "screenshots" / "05_query_demo.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_until_up(f"{base}/api/status?token={token}", server)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/05_query_demo.ipynb?token={token}")
            page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
            # the kernel must be up before "Run All Cells", or the request is lost
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
                state="attached", timeout=90_000)
            box = page.locator("input[placeholder^='describe a sound']")
            for attempt in range(3):  # a Run All sent while the kernel connection settles can be dropped
                _run_all_cells(page)
                try:
                    box.wait_for(timeout=60_000)
                    break
                except Exception:
                    page.screenshot(path=str(screenshot.with_name("05_query_demo_failure.png")), full_page=True)
                    if attempt == 2:
                        raise
            box.fill("a bell rings")
            box.press("Enter")
            rows = page.locator(".salsa-result")
            rows.first.wait_for(timeout=60_000)
            assert rows.count() == 5  # top 5 of the 6 test clips
            assert page.locator(".salsa-result audio").count() == 5
            assert page.locator(".salsa-result img").count() == 5
            rows.last.scroll_into_view_if_needed()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=False)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert screenshot.stat().st_size > 10_000
