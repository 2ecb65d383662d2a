"""The readiness check of the paper profile: every item named, what to do said, no network touched."""

import json
import re

import pytest
import requests

from salsa_lib import paths, readiness, runner
from salsa_lib.data.fake_clotho import install_fake_clotho
from salsa_lib.profiles import PROFILES

CLOTHO = PROFILES["clotho"]


class Offline:
    """A probe that records what it was asked and answers like a machine without network."""

    def __init__(self):
        self.calls = []

    def __call__(self, url, timeout):
        self.calls.append((url, timeout))
        return "no connection (ConnectionError)"


def never(url, timeout):
    raise AssertionError(f"the check asked the network for {url} although the file is on disk")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SALSA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def test_offline_machine_without_gpu_is_not_ready_and_says_what_to_do(home):
    probe = Offline()
    items = readiness.check(CLOTHO, probe=probe, gpus=[], free_bytes=10**12)
    status = {i.name: i.status for i in items}
    assert status == {"ClothoV2.1 development": "MISSING", "ClothoV2.1 validation": "MISSING",
                      "ClothoV2.1 evaluation": "MISSING", "PaSST AudioSet weights": "MISSING",
                      "text encoder roberta-large": "MISSING", "GPU": "MISSING", "disk": "OK",
                      "released checkpoint (optional)": "OPTIONAL"}
    for item in items:
        if item.status != "OK":
            assert item.todo, item.name
        if item.name != "GPU" and item.status == "MISSING":
            assert "offline" in item.detail, item.name
    assert all(timeout <= 5 for _, timeout in probe.calls) and len(probe.calls) == 5
    text, code = readiness.report(items)
    assert code == 1 and "not ready" in text and "zenodo.org/record/4783391" in text
    assert "passt-s-f128-p16-s16-ap.468.pt" in text and "clotho-dryrun" in text


def test_reachable_sources_are_not_missing_files(home):
    items = readiness.check(CLOTHO, probe=lambda url, timeout: None, gpus=[], free_bytes=10**12)
    passt = next(i for i in items if i.name == "PaSST AudioSet weights")
    assert passt.status == "MISSING" and "reachable" in passt.detail  # still required: nothing was fetched
    assert not list((home / "torch").rglob("*.pt")) and not (home / "home" / "data").exists()


def _hub_cache(root, name, files):
    repo = root / f"models--{name}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    for file in files:
        path = repo / "snapshots" / "abc123" / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")


def test_everything_on_disk_is_ready_without_asking_the_network(home, monkeypatch):
    root = home / "home" / "data" / "clotho_v2"
    install_fake_clotho(root, {"development": 1, "validation": 1, "evaluation": 1})
    table = json.loads((root.parent / "clotho_v2_mirror" / "md5.json").read_text())["files"]
    monkeypatch.setattr(readiness, "CLOTHO_FILES", table)
    passt = home / "torch" / "hub" / "checkpoints" / readiness.PASST_FILE
    passt.parent.mkdir(parents=True)
    passt.write_bytes(b"weights")
    _hub_cache(home / "hf", "roberta-large", ["config.json", "model.safetensors", "vocab.json"])
    released = home / "home" / "data" / "checkpoints" / "passt_roberta.ckpt"
    released.parent.mkdir(parents=True)
    released.write_bytes(b"ckpt")
    items = readiness.check(CLOTHO, probe=never, gpus=[("NVIDIA H100", 80.0)], free_bytes=10**12)
    assert [i.status for i in items] == ["OK"] * len(items), readiness.report(items)[0]
    assert readiness.report(items)[1] == 0
    disk = readiness.check(CLOTHO, probe=never, gpus=[("NVIDIA H100", 80.0)], free_bytes=10**9)[-2]
    assert disk.name == "disk" and disk.status == "MISSING" and "SALSA_HOME" in disk.todo


@pytest.mark.parametrize("memory, status", [(80.0, "OK"), (40.0, "WARN"), (16.0, "MISSING")])
def test_gpu_memory_against_the_estimate(memory, status):
    item = readiness.gpu_item([("Some GPU", memory)], (29.7, 52.4))
    assert item.status == status and "Some GPU" in item.detail and "30-52 GB" in item.detail


def _write_estimate(root, low, high):
    path = root / "results" / "benchmarks" / "models.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"paper_shapes": {"gpu_memory_estimate": {"total_gb_fp16_amp_range": [low, high]}}}))


def test_a_gpu_without_a_memory_estimate_is_unknown_not_ok(home, monkeypatch):
    monkeypatch.setattr(paths, "REPO_ROOT", home / "code")  # no estimate under SALSA_HOME nor beside the code
    gpu = next(i for i in readiness.check(CLOTHO, probe=Offline(), gpus=[("NVIDIA H100", 80.0)], free_bytes=10**12)
               if i.name == "GPU")
    assert gpu.status == "UNKNOWN" and "NVIDIA H100" in gpu.detail and "no memory estimate" in gpu.detail
    assert "bench_models.py" in gpu.todo
    text, _ = readiness.report([gpu])
    assert text.startswith("[UNKNOWN ] GPU") and "what to do" in text


def test_the_estimate_under_salsa_home_comes_first(home):
    _write_estimate(home / "home", 100.0, 120.0)  # a GPU too large for any card, measured by this user
    gpu = next(i for i in readiness.check(CLOTHO, probe=Offline(), gpus=[("NVIDIA H100", 80.0)], free_bytes=10**12)
               if i.name == "GPU")
    assert gpu.status == "MISSING" and "100-120 GB" in gpu.detail


def test_the_estimate_comes_from_the_benchmark_summary():
    low, high = readiness.gpu_need_gb()
    assert 0 < low < high


def test_http_probe_uses_a_short_timeout_and_reports_failures(monkeypatch):
    seen = {}

    def head(url, timeout, allow_redirects):
        seen["timeout"] = timeout
        raise requests.exceptions.ConnectTimeout("slow")

    monkeypatch.setattr(requests, "head", head)
    assert readiness.http_probe("https://example.invalid/x", timeout=2.0) == "no connection (ConnectTimeout)"
    assert seen["timeout"] == 2.0


def test_run_all_check_exits_non_zero_offline(home, monkeypatch, capsys):
    monkeypatch.setattr(readiness, "http_probe", Offline())
    monkeypatch.setattr(readiness, "cuda_gpus", lambda: [])
    assert runner.main(["--profile", "clotho", "--check"]) == 1
    out = capsys.readouterr().out
    printed = {name: status for status, name in re.findall(r"^\[(\w+) *\] ([^:]+):", out, flags=re.MULTILINE)}
    assert {name: printed.get(name) for name in ("ClothoV2.1 development", "PaSST AudioSet weights",
                                                  "text encoder roberta-large", "GPU", "disk")} == {
        "ClothoV2.1 development": "MISSING", "PaSST AudioSet weights": "MISSING", "text encoder roberta-large": "MISSING",
        "GPU": "MISSING", "disk": "OK"}
    assert out.rstrip().splitlines()[-1].startswith("not ready: missing ClothoV2.1 development")
    assert not (home / "home" / "results").exists()  # nothing ran
    assert runner.main(["--profile", "tiny", "--check"]) == 0  # the tiny profile needs nothing
