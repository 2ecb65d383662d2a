"""The benchmark suite runner: its summary of fake JSON files, and one quick script run end to end."""

import json
import os
from pathlib import Path

import pytest

import benchmark_scripts

pytestmark = pytest.mark.slow

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


FAKE = {
    "data": {"date": "2026-01-01", "machine": "fake, 2 cores", "clips": 10, "repeats": 3,
             "cache_read_crop_clips_per_s": 500.0, "librosa_load_crop_clips_per_s": 50.0,
             "synthetic_default_generate_s": 1.5,
             "synthetic_train_cache_build_s": 0.5},
    "search": {"date": "2026-01-01 10:00", "machine": "fake", "queries": 5, "top_k": 10, "dim": 8,
               "search": [{"kind": "random", "size": 1000, "exact": {"p50_ms": 8.0, "p95_ms": 9.0},
                           "ivf": {"p50_ms": 2.0, "p95_ms": 3.0, "recall_at_10": 0.97, "build_s": 0.1, "index_gb": 0.01,
                                   "rss_growth_gb": 0.03},
                           "flat": {"build_s": 0.1, "k_factor_50": {"p50_ms": 1.0, "recall_at_10": 0.9}}}],
               "indexing": {"clips": 4, "clip_seconds": 5.0, "index_files_per_s": 20.0,
                            "decode_files_per_s": 100.0, "cached_rebuild_files_per_s": 2000.0},
               "target": {"size": 1000000, "p50_ms": 10.0, "recall_at_10": 0.95, "index_gb": 2.0, "met": {}}},
    "models": {"date": "2026-01-01 10:00", "machine": "fake", "warmup_steps": 1, "quick": False,
               "tiny": {"batch": 32, "clip_seconds": 5.0,
                        "train": {"clips_per_s": 64.0, "seconds_per_step_median": 0.5,
                                  "seconds_per_step_all": [0.4, 0.5, 0.6]},
                        "parameters": {"all": {"total": 2_000_000, "trainable": 1_000_000}},
                        "embed": {"batch": 32, "repeats": 5, "audio_clips_per_s": 100.0, "captions_per_s": 300.0}},
               "thread_use": {"precision": "32-true", "batch": 32, "clip_seconds": 5.0, "repeats": 3,
                              "seconds_per_step_one_thread": 0.6, "seconds_per_step_two_threads": 0.4,
                              "seconds_per_step_side_by_side": [0.7, 0.7],
                              "throughput_pair_vs_two_threads": 1.14},
               "paper_shapes": {"batch": 4, "clip_seconds": 30.0,
                                "train": {"clips_per_s": 0.32, "seconds_per_step_median": 12.5,
                                          "seconds_per_step_all": [12.5]}}},
    "pipeline": {"date": "2026-01-01 10:00", "machine": "fake", "quick": True, "status": "ok",
                 "command": "./run_all.sh --profile tiny --force --quiet",
                 "notebooks": [{"notebook": "00_data", "seconds": 3.0, "peak_rss_mb": 700.0}],
                 "cpu": "Fake EPYC (avx2)", "cpu_native_bf16": False,
                 "notebook_seconds_total": 3.0, "wall_s": 5.0, "peak_rss_mb": 700.0,
                 "target": {"wall_s": 600, "met": True}},
    "setup": {"date": "2026-01-01 10:00", "machine": "fake", "commit": "abc1234", "fresh_s": 90.0,
              "reuse_s": 1.5, "venv_gb": 6.6},
    "correspondences": {"date": "2026-01-01 10:00", "machine": "fake", "quick": False,
                        "runs": [{"teachers": 3, "clips": 3839, "captions": 19195, "dim": 1024, "block": 2048,
                                  "seconds": 3.0, "peak_added_gb": 0.8, "fp16_inputs_gb": 0.14}],
                        "target": {"peak_added_gb": 2.0, "clips": 3839, "met": True}},
    "paper_search": {"date": "2026-01-01 10:00", "machine": "fake", "quick": False, "cpu": "Fake EPYC (avx2)",
                     "cpu_native_bf16": False, "windows": 120, "window_seconds": 10.0, "hop_seconds": 5.0, "batch": 4,
                     "torch_threads": 2, "queries": 50, "query_tokens": [8, 22], "load_average_before": [2.5, 2.0, 1.0],
                     "load_average_after": [3.0, 2.2, 1.1], "faster_path": "int8", "faster_path_means": "dynamic int8",
                     "fp32": {"audio_minutes_per_minute": 3.2, "seconds_per_window": 1.57, "query_ms_median": 180.0},
                     "faster": {"audio_minutes_per_minute": 4.8, "seconds_per_window": 1.05, "query_ms_median": 60.0},
                     "indexing_speedup_median_of_pairs": 1.5, "query_speedup_median_of_pairs": 3.0,
                     "recall_at_10": 0.96, "recall_at_10_fp32_queries": 0.97,
                     "cosine_audio": {"min": 0.997, "median": 0.998}, "cosine_text": {"min": 0.99, "median": 0.995},
                     "fp32_window_pairwise_cosine_mean": 0.9, "kept": True,
                     "choice": {"chosen": "int8", "rule": "fastest indexing", "candidates": {
                         "bf16": {"indexing_speedup_median_of_pairs": 1.2, "query_speedup_median_of_pairs": 0.8,
                                  "recall_at_10": 0.99}}}, "kept_rule": "faster and recall >= 0.95",
                     "goals": {"speedup": 2.0, "recall_at_10": 0.95, "query_ms": 150.0, "speedup_and_recall_met": False,
                               "query_met_fp32": False, "query_met_faster": True}},
    "extra": {"date": "2026-01-01", "nested": {"speed": 7.5, "flag": True}, "listed": [1, 2]},
}


def _value(result, benchmark, figure):
    return next(r["value"] for r in result["figures"] if r["benchmark"] == benchmark and r["figure"] == figure)


def test_aggregate_reads_every_figure_from_the_json_files(tmp_path):
    run_benchmarks = benchmark_scripts.load("run_benchmarks")
    source = tmp_path / "results" / "benchmarks"
    source.mkdir(parents=True)
    for name, data in FAKE.items():
        (source / f"{name}.json").write_text(json.dumps(data))
    (source / "broken.json").write_text("{not json")
    out_json, out_md = tmp_path / "benchmarks.json", tmp_path / "benchmarks.md"

    result = run_benchmarks.aggregate(source, out_json, out_md)

    assert json.loads(out_json.read_text()) == json.loads(json.dumps(result))
    assert set(result) >= {"generated", "aggregator_machine", "figures", "ratios", "sources", "runs"}
    assert set(result["sources"]) == set(FAKE) | {"broken"} and "error" in result["sources"]["broken"]
    for row in result["figures"] + result["ratios"]:
        assert set(row) >= {"benchmark", "value"}
    assert _value(result, "data", "cache read + crop") == 500.0
    assert _value(result, "search", "FAISS (ivf) p50 latency, 1,000 random vectors") == 2.0
    size = next(r for r in result["figures"] if r["figure"] == "FAISS (ivf) index size, 1,000 random vectors")
    assert size["value"] == 0.01 and "serialize" in size["how"] and "RSS" not in size["how"]  # bytes, not memory
    assert _value(result, "search", "FAISS (ivf) build, resident memory added, 1,000 random vectors") == 0.03
    assert _value(result, "models", "tiny model: training throughput") == 64.0
    assert _value(result, "models", "paper shapes: seconds per step") == 12.5
    assert _value(result, "pipeline", "00_data: peak RSS (process tree)") == 700.0
    assert _value(result, "pipeline", "`./run_all.sh --profile tiny --force --quiet`: wall") == 5.0
    assert _value(result, "pipeline", "target: wall <= 600 s") == "met"
    assert _value(result, "correspondences", "full-split estimate, 3 teachers: peak memory added") == 0.8
    assert _value(result, "correspondences", "target: <= 2.0 GB at once at 3,839 clips") == "met"
    # shown relative to the results home, never as this machine's absolute path
    assert result["source_dir"] == "results/benchmarks"
    assert result["sources"]["data"]["file"] == "results/benchmarks/data.json"
    # the paper model's search: both paths, the faster one's agreement with fp32, the goals, the CPU in each row
    assert _value(result, "paper_search", "fp32: audio indexed") == 3.2
    assert _value(result, "paper_search", "int8: audio indexed") == 4.8
    assert _value(result, "paper_search", "int8: one text query") == 60.0
    assert _value(result, "paper_search", "int8 vs fp32: recall@10") == 0.96
    assert _value(result, "paper_search", "int8 vs fp32: cosine of audio embeddings (min / median)") == "0.997 / 0.998"
    assert _value(result, "paper_search", "goal: int8 >= 2.0x fp32's indexing at recall@10 >= 0.95") == "NOT met"
    assert _value(result, "paper_search", "goal: one query <= 150 ms, int8") == "met"
    assert _value(result, "paper_search", "candidate bf16: indexing / query speed-up, recall@10") == "1.2x / 0.8x, 0.99"
    assert all("Fake EPYC" in r["how"] for r in result["figures"]
               if r["benchmark"] == "paper_search" and "indexed" in r["figure"])
    assert _value(result, "extra", "nested.speed") == 7.5  # an unknown file still shows its numbers
    assert not any(r["figure"] == "nested.flag" for r in result["figures"])
    ratios = {(r["benchmark"], r["ratio"]): r["value"] for r in result["ratios"]}
    assert ratios[("paper_search", "int8 vs fp32, indexing")] == 1.5  # the stored median of pairs, not 4.8 / 3.2
    assert ratios[("data", "cache vs librosa (throughput)")] == 10.0
    assert ratios[("setup", "first vs second run")] == 60.0
    assert ratios[("search", "FAISS vs exact p50 latency, 1,000 random vectors")] == 4.0
    assert ratios[("models", "paper shapes vs tiny, seconds per clip in training")] == 200.0
    assert ratios[("models", "tiny fp32 step, two threads vs one")] == 1.5
    assert _value(result, "models", "tiny model fp32: seconds per step, two one-thread processes side by side") == \
        "0.7 / 0.7"
    assert _value(result, "models",
                  "tiny fp32 training throughput, two one-thread processes vs one two-thread process") == 1.14

    md = out_md.read_text()
    assert md.startswith("# Benchmarks")
    for name in FAKE:
        assert f"## {name}" in md
    assert "| cache vs librosa (throughput) | 10.0x |" in md
    assert "quick run" in md.split("## pipeline")[1]  # quick figures are flagged
    # the CPU kind stands beside the figures measured on it, and only where the file records it
    assert "on fake (Fake EPYC (avx2), no native bf16)" in md.split("## pipeline")[1].split("##")[0]
    assert "(Fake EPYC" not in md.split("## setup")[1].split("##")[0]
    assert "Could not read" in md


def test_the_paper_vs_tiny_ratio_rests_on_seconds_per_step_not_a_rounded_throughput(tmp_path):
    """The committed figures: 0.2 clips/s is 4 clips / 19.546 s rounded; 1/0.2 over 1/53.7 gave 268.5x."""
    models = {"date": "2026-01-01", "machine": "fake", "warmup_steps": 1,
              "tiny": {"batch": 32, "clip_seconds": 5.0,
                       "train": {"clips_per_s": 53.7, "seconds_per_step_median": 0.596, "step": "notebook 01's step"}},
              "paper_shapes": {"batch": 4, "clip_seconds": 30.0,
                               "train": {"clips_per_s": 0.2, "seconds_per_step_median": 19.546, "step": "fp32"}}}
    source = tmp_path / "results" / "benchmarks"
    source.mkdir(parents=True)
    (source / "models.json").write_text(json.dumps(models))
    result = benchmark_scripts.load("run_benchmarks").aggregate(source, tmp_path / "b.json", tmp_path / "b.md")
    (ratio,) = result["ratios"]
    assert ratio["value"] == round((19.546 / 4) / (0.596 / 32), 2) == 262.36
    assert "notebook 01's step" in ratio["meaning"] and "fp32" in ratio["meaning"]
    throughput = next(r for r in result["figures"] if r["figure"] == "tiny model: training throughput")
    assert "notebook 01's step" in throughput["how"]  # each figure says which step it timed


def test_peak_rss_sees_memory_held_when_the_block_ends():
    import numpy as np

    bench_correspondences = benchmark_scripts.load("bench_correspondences")
    with bench_correspondences.PeakRSS() as memory:
        held = np.ones(16 * 2**20)  # 128 MiB, touched: above malloc's mmap threshold, so fresh pages
    assert memory.added_gb >= 0.9 * held.nbytes / 1e9
    with bench_correspondences.PeakRSS() as idle:
        pass
    assert idle.added_gb < 0.9 * held.nbytes / 1e9


def test_runner_runs_a_quick_script_and_summarises_it(tmp_path, capsys):
    run_benchmarks = benchmark_scripts.load("run_benchmarks")
    code = run_benchmarks.main(["--only", "models", "--quick", "--no-nice", "--results-home", str(tmp_path)])
    assert code == 0, capsys.readouterr()
    models = json.loads((tmp_path / "results" / "benchmarks" / "models.json").read_text())
    assert models["quick"] is True and models["paper_shapes"] is None
    assert models["tiny"]["train"]["clips_per_s"] > 0 and models["tiny"]["embed"]["captions_per_s"] > 0
    threads = models["thread_use"]  # the side-by-side processes ran and each timed its steps
    assert "skipped" not in threads or (os.cpu_count() or 1) < 2, threads
    assert "skipped" in threads or len(threads["seconds_per_step_side_by_side"]) == 2 and min(threads["seconds_per_step_side_by_side"]) > 0
    assert "skipped" in threads or threads["throughput_pair_vs_two_threads"] > 0 and threads["precision"] == "32-true"
    from salsa_lib.stages import precision

    tiny = models["tiny"]["train"]
    assert {k: models[k] for k in ("cpu", "cpu_native_bf16")} == precision.cpu_record()  # timings name the CPU
    assert tiny["precision"] == precision.resolve("auto", "cpu")  # the tiny profile's precision on this CPU
    assert "notebook 01" in tiny["step"] and "step caches" in tiny["step"] and tiny["precision"] in tiny["step"]
    summary = json.loads((tmp_path / "results" / "benchmarks.json").read_text())
    assert [r["benchmark"] for r in summary["runs"]] == ["models"] and summary["runs"][0]["returncode"] == 0
    assert _value(summary, "models", "tiny model: training throughput") == models["tiny"]["train"]["clips_per_s"]
    assert "## models" in (tmp_path / "results" / "benchmarks.md").read_text()


def test_paper_memory_estimate_counts_activations_not_weights():
    import torch
    from torch import nn

    bench_models = benchmark_scripts.load("bench_models")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 8))
    model[2].weight.requires_grad_(False)

    def measured(batch):
        x = torch.randn(batch, 256)
        return bench_models.saved_activation_bytes(model, lambda: model(x).square().sum())

    one, four = measured(1), measured(4)
    weight_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert 0 < one < weight_bytes  # the (large) weights saved for backward are not counted
    assert four == 4 * one  # activations grow with the batch
    estimate = bench_models.memory_estimate(model, four, batch=4, target_batch=64)
    trainable = 256 * 512 + 512 + 8
    assert estimate["static_bytes"] == 16 * trainable + 4 * 512 * 8  # the frozen layer: weights only
    assert estimate["activation_bytes_at_target_batch"] == 16 * four


def test_correspondence_benchmark_quick_run_writes_its_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("SALSA_HOME", str(tmp_path))
    assert benchmark_scripts.load("bench_correspondences").main(["--quick"]) == 0  # also checks block-wise == direct
    written = json.loads((tmp_path / "results" / "benchmarks" / "correspondences.json").read_text())
    (run,) = written["runs"]
    assert run["teachers"] == 2 and run["captions"] == 5 * run["clips"] == 1500
    assert run["result_gb"] == round(300 * 1500 * 4 / 1e9, 3)  # how PeakRSS measures: the test above
    assert written["quick"] is True and written["target"]["met"] is None


def test_aggregate_only_keeps_the_runs_that_wrote_the_files(tmp_path):
    source = tmp_path / "results" / "benchmarks"
    source.mkdir(parents=True)
    (source / "data.json").write_text(json.dumps(FAKE["data"]))
    runs = [{"benchmark": "data", "returncode": 0, "wall_s": 21.6}]
    (tmp_path / "results" / "benchmarks.json").write_text(json.dumps({"runs": runs}))
    assert benchmark_scripts.load("run_benchmarks").main(["--aggregate-only", "--results-home", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "results" / "benchmarks.json").read_text())["runs"] == runs
    assert "| bench_data.py | 0 | 21.6 |" in (tmp_path / "results" / "benchmarks.md").read_text()


def test_recall_at_10_counts_the_reference_top_10_found():
    import torch

    bench = benchmark_scripts.load("bench_paper_search")
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(6, 40, generator=generator)
    assert bench.recall_at_k(reference, reference.clone()) == [1.0] * 6
    other = reference + 0.5 * torch.randn(6, 40, generator=generator)
    for row, got in enumerate(bench.recall_at_k(reference, other)):  # brute force: sort, take 10, intersect
        top = lambda scores: set(sorted(range(40), key=lambda j: -scores[row, j].item())[:10])
        assert got == len(top(reference) & top(other)) / 10
    assert bench.recall_at_k(reference, -reference) == [0.0] * 6  # reversed ranking: none of the top 10


def test_paper_search_quick_run_compares_a_path_with_fp32(tmp_path, monkeypatch):
    monkeypatch.setenv("SALSA_HOME", str(tmp_path))
    bench = benchmark_scripts.load("bench_paper_search")
    written = tmp_path / "results" / "benchmarks" / "paper_search.json"
    bench.main(["--quick", "--path", "fp32"])  # the control: fp32 against itself
    control = json.loads(written.read_text())
    assert control["faster_path"] == "fp32" and control["choice"] is None and control["quick"] is True
    assert control["recall_at_10"] == control["recall_at_10_fp32_queries"] == 1.0
    assert control["cosine_audio"] == control["cosine_text"] == {"min": 1.0, "median": 1.0}
    assert control["kept"] is False  # fp32 is no faster path, whatever the timings say

    bench.main(["--quick"])  # chooses among the candidates this CPU has, then measures the chosen one
    chosen = json.loads(written.read_text())
    from salsa_lib.stages import precision

    assert {k: chosen[k] for k in ("cpu", "cpu_native_bf16")} == precision.cpu_record()
    assert set(chosen["choice"]["candidates"]) == set(bench.candidates())
    assert chosen["faster_path"] == chosen["choice"]["chosen"] != "fp32"
    assert 0 <= chosen["recall_at_10"] <= 1 and chosen["top_k"] == 10 and 0.9 < chosen["cosine_audio"]["min"] <= 1
    for path in ("fp32", "faster"):
        assert chosen[path]["audio_minutes_per_minute"] > 0 and chosen[path]["query_ms_median"] > 0
    assert len(chosen["load_average_before"]) == len(chosen["load_average_after"]) == 3
    assert chosen["windows"] == 24 and chosen["hop_seconds"] == chosen["window_seconds"] / 2
    assert set(chosen["goals"]) >= {"speedup_and_recall_met", "query_met_fp32", "query_met_faster"}


def test_the_worker_memory_of_the_plan_covers_the_stored_measurement():
    """parallel_runs.WORKER_MEMORY_MB quotes the largest process of notebooks 01 and 03 in the stored pipeline
    run, with a margin: a re-measured run that needs more makes this fail until the figure follows."""
    from salsa_lib.stages import parallel_runs

    stored = json.loads((BENCH_DIR.parent / "results" / "benchmarks" / "pipeline.json").read_text())
    peak = max(n["peak_process_rss_mb"] for n in stored["notebooks"] if n["notebook"][:2] in ("01", "03"))
    assert 1.2 * peak <= parallel_runs.WORKER_MEMORY_MB <= 1.5 * peak


def _check_stage1_length(report: dict) -> None:
    """The fields of stage1_length.json, and each paired interval against scipy's paired t test on its rows."""
    import numpy as np
    from scipy import stats

    assert {"command", "commit", "date", "cpu", "cpu_native_bf16", "wall_s", "rows", "differences"} <= set(report)
    assert report["precision"] == "32-true" and report["recorded_precisions"] == ["32-true"]
    normal, longer = report["schedules"]["normal"], report["schedules"]["longer"]
    factor = longer["epochs"] // normal["epochs"]
    assert factor >= 2 and longer == {k: v * factor for k, v in normal.items()}  # the same shape, stretched
    rows = {(r["epochs"], r["weights"], r["seed"]): r for r in report["rows"]}
    assert len(rows) == len(report["rows"]) == 2 * 2 * report["members"]  # two lengths, best and last weights
    assert sorted({r["seed"] for r in report["rows"]}) == report["seeds"]
    assert {r["seed"] - report["seeds"][0] for r in report["rows"]} == set(range(report["members"]))
    for d in report["differences"]:
        scores = {length: [rows[(schedule["epochs"], d["weights"], s)][d["metric"]] for s in report["seeds"]]
                  for length, schedule in (("normal", normal), ("longer", longer))}
        diff = [b - a for a, b in zip(scores["normal"], scores["longer"])]
        n = len(diff)
        mean = sum(diff) / n
        std = (sum((x - mean) ** 2 for x in diff) / (n - 1)) ** 0.5
        assert d["per_seed"] == pytest.approx(diff) and d["n"] == n
        assert (d["mean"], d["std"]) == pytest.approx((mean, std), abs=1e-9)
        assert d["gains"] == f"{sum(x > 0 for x in diff)}/{n}"
        if std > 1e-9:  # the interval is where a paired t test does not reject: scipy's own interval
            interval = stats.ttest_rel(scores["longer"], scores["normal"]).confidence_interval(0.95)
            assert (d["ci_low"], d["ci_high"]) == pytest.approx((interval.low, interval.high), abs=1e-9)
            assert stats.ttest_1samp(diff, d["ci_low"]).pvalue == pytest.approx(0.05, abs=1e-9)
        else:
            assert d["ci_low"] == pytest.approx(mean, abs=1e-9) and d["ci_high"] == pytest.approx(mean, abs=1e-9)
        excludes = d["ci_low"] > 0 or d["ci_high"] < 0
        assert d["call"] == ("no finding" if not excludes else "gain" if d["ci_low"] > 0 else "loss")
        assert np.isfinite(d["ci_low"]) and np.isfinite(d["ci_high"])
    assert {(d["weights"], d["metric"]) for d in report["differences"]} >= {("best", "mAP@10"), ("last", "mAP@10")}


def test_stage1_length_quick_pairs_the_seeds_reuses_its_runs_and_its_intervals_are_paired_t(tmp_path, monkeypatch):
    monkeypatch.setenv("SALSA_HOME", str(tmp_path / "unused"))  # restored afterwards; --home sets it
    bench = benchmark_scripts.load("bench_stage1_length")
    home, out = tmp_path / "home", tmp_path / "stage1_length.json"
    assert bench.main(["--quick", "--home", str(home), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["members"] == 3
    assert report["schedules"]["normal"]["epochs"] == 1 and report["schedules"]["longer"]["epochs"] == 2
    _check_stage1_length(report)
    records = sorted((home / "results" / "tiny-stage1-length").glob("epochs*/stage1/member*/run.json"))
    assert len(records) == 6
    before = [json.loads(p.read_text())["time"] for p in records]
    assert bench.main(["--quick", "--home", str(home), "--output", str(out)]) == 0  # rerun: nothing retrains
    assert [json.loads(p.read_text())["time"] for p in records] == before
    assert json.loads(out.read_text())["rows"] == report["rows"]


def test_the_stored_stage1_length_result_holds_together():
    """The committed measurement (benchmarks/bench_stage1_length.py): twice the schedule, paired by seed,
    its intervals those of a paired t test on its own per-seed rows."""
    report = json.loads((BENCH_DIR.parent / "results" / "benchmarks" / "stage1_length.json").read_text())
    assert report["quick"] is False and report["members"] >= 3
    assert report["schedules"]["longer"]["epochs"] == 2 * report["schedules"]["normal"]["epochs"]
    _check_stage1_length(report)
