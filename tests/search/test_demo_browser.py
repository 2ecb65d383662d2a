"""The query demo in a real browser: JupyterLab on 127.0.0.1, headless Chromium driven by Playwright.

It types a query into the running notebook's text box and checks that result rows with audio
players appear, then searches a folder holding a 40 s recording and checks that its row names a
one-window span (played on its own, the whole file a click away); a screenshot lands in
results/screenshots/ under SALSA_HOME (the repository unless it is set). Without Chromium the test
fails where the browser is required (SALSA_REQUIRE_BROWSER=1, which CI sets in .ci/run, or CI=true)
and is skipped with that reason elsewhere; scripts/bootstrap.sh --test installs Chromium where it can.
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

from salsa_lib import paths
from salsa_lib.config import DataConfig, Stage1Config

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# resolved at import, from the SALSA_HOME the run was started with (the fixture below moves SALSA_HOME
# to a temporary folder for the trained model; the screenshot is for the user)
SCREENSHOTS = paths.results_dir("screenshots")
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


KERNEL_DISPLAY_NAME = "Python (salsa)"  # what scripts/bootstrap.sh registers as runner.KERNEL_NAME


def _answer_dialogs(page, seen: list[str]) -> None:
    """Answer any JupyterLab dialog that covers the page, noting its text in ``seen``.

    A kernel chooser (JupyterLab asks when it cannot start the notebook's kernel by itself) gets the
    project's kernel; any other dialog is accepted. Either way the test never clicks a covered menu.
    """
    dialogs = page.locator(".jp-Dialog")
    while dialogs.count():
        dialog = dialogs.first
        seen.append(" / ".join(line.strip() for line in dialog.inner_text().splitlines() if line.strip()))
        chooser = dialog.locator("select")
        if chooser.count() and chooser.first.locator("option", has_text=KERNEL_DISPLAY_NAME).count():
            chooser.first.select_option(label=KERNEL_DISPLAY_NAME)
        dialog.locator(".jp-Dialog-button.jp-mod-accept").first.click()
        dialog.wait_for(state="detached", timeout=10_000)


def _wait_past_dialogs(page, target, seen: list[str], timeout: int) -> None:
    """Wait for ``target`` to be attached, answering the dialogs that appear on the way."""
    for _ in range(5):  # each answered dialog may be followed by another (at most a few)
        target.or_(page.locator(".jp-Dialog")).first.wait_for(state="attached", timeout=timeout)
        if not page.locator(".jp-Dialog").count():
            return
        _answer_dialogs(page, seen)
    target.first.wait_for(state="attached", timeout=timeout)


def _run_all_cells(page, seen: list[str], attempts: int = 3) -> None:
    """Menu Run > Run All Cells, repeated if the kernel was not connected yet and nothing started."""
    started = page.locator(".jp-InputPrompt", has_text="[1]").or_(page.locator(".jp-InputPrompt", has_text="[*]"))
    for _ in range(attempts):
        _answer_dialogs(page, seen)
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            started.first.wait_for(timeout=20_000)
            return
        except Exception:
            page.keyboard.press("Escape")
    raise AssertionError(f"JupyterLab did not start executing the notebook after {attempts} tries")


def browser_required(environ=os.environ) -> bool:
    """CI must not go green without the demo ever opening: there a missing browser is a failure."""
    return environ.get("SALSA_REQUIRE_BROWSER") == "1" or environ.get("CI", "").lower() in ("1", "true")


def require_chromium(path: str = CHROMIUM, environ=os.environ) -> None:
    """Fail (where the browser is required) or skip, naming what to install, when ``path`` is missing."""
    if Path(path).exists():
        return
    message = (f"no Chromium at {path}: install it (as root: apt-get install chromium, which "
               "scripts/bootstrap.sh --test does where it can)")
    if browser_required(environ):
        pytest.fail(f"{message}; the browser test is required here (SALSA_REQUIRE_BROWSER=1 or CI=true)")
    pytest.skip(f"{message}; set SALSA_REQUIRE_BROWSER=1 to make this a failure")


def test_a_missing_browser_fails_where_it_is_required_and_skips_only_elsewhere(tmp_path):
    missing = str(tmp_path / "no-chromium")
    for environ in ({"SALSA_REQUIRE_BROWSER": "1"}, {"CI": "true"}):
        with pytest.raises(pytest.fail.Exception, match="required"):
            require_chromium(missing, environ)
    with pytest.raises(pytest.skip.Exception, match="SALSA_REQUIRE_BROWSER"):
        require_chromium(missing, {})
    ci = (Path(__file__).resolve().parent.parent.parent / ".ci" / "run").read_text()
    assert re.search(r"^export SALSA_REQUIRE_BROWSER=1$", ci, flags=re.MULTILINE)  # CI requires it


def _set_up_without_chromium(tmp_path, **environ) -> subprocess.CompletedProcess:
    """The set-up's Chromium step as a non-root user on a machine without it (never runs apt-get)."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "id").write_text("#!/bin/sh\necho 1000\n")
    (fake / "id").chmod(0o755)
    step = f'set -euo pipefail; SALSA_ROOT="{tmp_path}"; source "{paths.REPO_ROOT}/scripts/chromium.sh"; ' \
           'salsa_need_chromium; echo "set-up goes on"'
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "SALSA_CHROMIUM": "salsa-no-such-browser", **environ}
    return subprocess.run(["bash", "-c", step], env=env, capture_output=True, text=True)


def test_set_up_stops_without_chromium_where_the_browser_test_is_required(tmp_path):
    for environ in ({"SALSA_REQUIRE_BROWSER": "1"}, {"CI": "true"}):
        required = _set_up_without_chromium(tmp_path, **environ)
        assert required.returncode == 1 and "set-up goes on" not in required.stdout
        assert "required" in required.stderr and "apt-get install chromium" in required.stderr
    elsewhere = _set_up_without_chromium(tmp_path)
    assert elsewhere.returncode == 0 and "set-up goes on" in elsewhere.stdout
    assert "will be skipped" in elsewhere.stderr and "SALSA_REQUIRE_BROWSER=1" in elsewhere.stderr
    bootstrap = (paths.REPO_ROOT / "scripts" / "bootstrap.sh").read_text()
    assert 'source "$SALSA_ROOT/scripts/chromium.sh"' in bootstrap and "\n  salsa_need_chromium\n" in bootstrap


def test_the_screenshot_goes_under_salsa_home(tmp_path):
    """Imported afresh with SALSA_HOME set, the module puts the screenshot there, not in the repository."""
    code = "import test_demo_browser as t; print(t.SCREENSHOTS)"
    shown = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True,
                           env={**os.environ, "SALSA_HOME": str(tmp_path), "PYTHONPATH": str(paths.REPO_ROOT)},
                           check=True).stdout.strip()
    assert Path(shown) == tmp_path / "results" / "screenshots"


@pytest.fixture
def trained_tiny(tmp_path, monkeypatch):
    """SALSA_HOME with a miniature synthetic set and one trained member, as profile 'tiny'."""
    # imported here: the quick tests above need neither
    from salsa_lib.data import data_sources
    from salsa_lib.stages import stage1

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
    """Our notebook with its audio_dir parameter set, the way papermill would inject it; it names the
    project's kernel, as every committed notebook does (tests/test_notebooks_clean.py)."""
    notebook = json.loads((paths.notebooks_dir() / "05_query_demo.ipynb").read_text(encoding="utf-8"))
    assert notebook["metadata"]["kernelspec"]["display_name"] == KERNEL_DISPLAY_NAME
    cell = next(c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    source = "".join(cell["source"])
    assert "audio_dir = ''" in source
    cell["source"] = source.replace("audio_dir = ''", f"audio_dir = {str(audio_dir)!r}")
    target.write_text(json.dumps(notebook), encoding="utf-8")


@pytest.fixture
def chromium() -> str:
    require_chromium()  # before the model is trained for nothing
    return CHROMIUM


@pytest.mark.slow
def test_query_demo_in_jupyterlab(chromium, trained_tiny, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    long_dir = _long_recording_folder(tmp_path / "long")
    _copy_notebook_with_audio_dir(served / "05_query_demo.ipynb", long_dir)  # never let the browser touch ours
    port, token = _free_port(), "salsa-test-token"
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={served}", "--ServerApp.open_browser=False",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", "--allow-root"],
        env={**os.environ, "SALSA_HOME": str(trained_tiny), **isolated_jupyter_environment(tmp_path / "user")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    screenshot = SCREENSHOTS / "05_query_demo.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    dialogs: list[str] = []  # the text of every dialog JupyterLab showed, for the failure message
    screenshot.with_name("05_query_demo_failure.png").unlink(missing_ok=True)  # an older run's
    try:
        _drive_demo(chromium, f"http://127.0.0.1:{port}", token, server, long_dir, screenshot, dialogs)
    except Exception as error:
        failure = screenshot.with_name("05_query_demo_failure.png")
        raise AssertionError(f"the demo failed in JupyterLab ({error}); dialogs shown: {dialogs or 'none'}; "
                             f"screenshot: {failure if failure.exists() else 'none taken'}") from error
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert screenshot.stat().st_size > 10_000


def isolated_jupyter_environment(home: Path) -> dict[str, str]:
    """The server's own home and Jupyter folders: whatever the user's hold (settings, workspaces,
    kernels, a remembered kernel choice) cannot change what the test sees."""
    folders = {"HOME": home, "JUPYTER_CONFIG_DIR": home / "jupyter_config",
               "JUPYTER_DATA_DIR": home / "jupyter_data", "JUPYTER_RUNTIME_DIR": home / "jupyter_runtime",
               "IPYTHONDIR": home / "ipython"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {name: str(folder) for name, folder in folders.items()}


def _drive_demo(chromium, base, token, server, long_dir, screenshot, dialogs) -> None:
    """Open the notebook, run it, search the test clips and the long recording; screenshot on failure."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            _search_in_the_demo(page, base, token, server, long_dir, screenshot, dialogs)
        except Exception:
            page.screenshot(path=str(screenshot.with_name("05_query_demo_failure.png")), full_page=True)
            dialogs.extend(" / ".join(t.split()) for t in page.locator(".jp-Dialog").all_inner_texts())
            raise
        finally:
            browser.close()


def _search_in_the_demo(page, base, token, server, long_dir, screenshot, dialogs) -> None:
    _wait_until_up(f"{base}/api/status?token={token}", server)
    page.goto(f"{base}/lab/tree/05_query_demo.ipynb?token={token}")
    page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
    # the kernel must be up before "Run All Cells", or the request is lost; a kernel chooser on the
    # way is answered with the project's kernel
    _wait_past_dialogs(page, page.locator(".jp-Toolbar-kernelName", has_text=KERNEL_DISPLAY_NAME), dialogs, 90_000)
    _wait_past_dialogs(page, page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']"), dialogs, 90_000)
    box = page.locator("input[placeholder^='describe a sound']")
    for attempt in range(3):  # a Run All sent while the kernel connection settles can be dropped
        _run_all_cells(page, dialogs)
        try:
            _wait_past_dialogs(page, box, dialogs, 60_000)
            break
        except Exception:
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
