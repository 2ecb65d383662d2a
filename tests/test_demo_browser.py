"""The query demo in a real browser: JupyterLab on 127.0.0.1, headless Chromium driven by Playwright.

It types a query into the running notebook's text box and checks that result rows with audio
players appear, then searches a folder holding a 40 s recording and checks that its row names a
one-window span (played on its own, the whole file a click away); a screenshot lands in
results/screenshots/. Skipped only where no Chromium is
installed (CI installs it: see scripts/bootstrap.sh).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from salsa_lib import data_sources, paths, stage1
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
    data_sources.fetch(data, progress=False)
    data_sources.load_splits(data, progress=False)
    data_sources.save_data_config(data)
    stage1.train_members(Stage1Config(members=1, passt_width=64, passt_depth=1, passt_heads=2, text_trainable_layers=1,
                                      embed_dim=32, train_seconds=1.0, eval_seconds=1.0, window_seconds=1.0,
                                      batch_size=10, eval_batch_size=4, epochs=1, warmup_epochs=0.5,
                                      rampdown_start=0.5, rampdown_stop=1.0), data, progress=False)
    return home


def _long_recording_folder(folder: Path) -> Path:
    """A 40 s recording (hum with a bell-like tone from 25 s) beside two short clips."""
    folder.mkdir()
    t = np.arange(40 * 16000) / 16000
    wave = 0.05 * np.sin(2 * np.pi * 60 * t) + (t >= 25) * (t < 27) * 0.3 * np.sin(2 * np.pi * 1200 * t)
    sf.write(folder / "long.wav", wave.astype(np.float32), 16000)
    for name, freq in (("short1.flac", 500), ("short2.ogg", 2000)):
        sf.write(folder / name, (0.2 * np.sin(2 * np.pi * freq * t[:24000])).astype(np.float32), 16000)
    return folder


def _copy_notebook_with_audio_dir(target: Path, audio_dir: Path) -> None:
    """Our notebook with its audio_dir parameter set, the way papermill would inject it."""
    notebook = json.loads((paths.notebooks_dir() / "05_query_demo.ipynb").read_text(encoding="utf-8"))
    cell = next(c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    source = "".join(cell["source"])
    assert "audio_dir = ''" in source
    cell["source"] = source.replace("audio_dir = ''", f"audio_dir = {str(audio_dir)!r}")
    target.write_text(json.dumps(notebook), encoding="utf-8")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no Chromium installed (apt-get install chromium)")
def test_query_demo_in_jupyterlab(trained_tiny, tmp_path):
    from playwright.sync_api import sync_playwright

    served = tmp_path / "served"
    served.mkdir()
    long_dir = _long_recording_folder(tmp_path / "long")
    _copy_notebook_with_audio_dir(served / "05_query_demo.ipynb", long_dir)  # never let the browser touch ours
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
            collection = page.locator("select", has=page.locator("option", has_text="folder: "))
            collection.select_option(label=f"folder: {long_dir}")
            box.fill("a bell rings")
            box.press("Enter")
            long_row = page.locator(".salsa-result", has_text="long.wav")
            long_row.wait_for(timeout=60_000)
            assert rows.count() == 3 and page.locator(".salsa-result audio").count() == 3
            span = long_row.locator(".salsa-span").inner_text()
            start, end = map(float, re.fullmatch(r"00:(\d\d(?:\.5)?)–00:(\d\d(?:\.5)?)", span).groups())
            assert end - start == 1 and end <= 40  # one 1 s window of the 40 s file, not the whole file
            assert "better than" in long_row.inner_text() and long_row.locator("img").count() == 1
            whole = long_row.locator("button", has_text="whole file")
            whole.click()
            page.wait_for_function("b => b.disabled", arg=whole.element_handle(), timeout=30_000)
            long_row.scroll_into_view_if_needed()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=False)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert screenshot.stat().st_size > 10_000
