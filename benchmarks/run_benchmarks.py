"""Run the benchmark scripts and aggregate their JSON into results/benchmarks.json and results/benchmarks.md.

Every ``benchmarks/bench_*.py`` runs as its own subprocess (in name order), writing
``results/benchmarks/<name>.json``; then every JSON there is summarised. Each figure in the summary is
read from those files (ratios are computed from them), nothing is typed in.

    .venv/bin/python benchmarks/run_benchmarks.py                  # run all, then aggregate
    .venv/bin/python benchmarks/run_benchmarks.py --only models,pipeline --quick
    .venv/bin/python benchmarks/run_benchmarks.py --skip search
    .venv/bin/python benchmarks/run_benchmarks.py --aggregate-only  # summarise the existing JSON files

``--quick`` passes ``--quick`` to the scripts that take it and small sizes to the others; since those
figures mean little, quick runs write under a scratch SALSA_HOME (printed) unless ``--results-home``
names one, so your results/benchmarks/*.json stay as they were.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
# small sizes for the scripts that have no --quick of their own
QUICK_ARGS = {"data": ["--clips", "20", "--repeats", "1"],
              "search": ["--sizes", "10000", "--queries", "20", "--clips", "4"]}

# scripts with no small variant
QUICK_SKIP = {"setup": "it always installs a whole environment, about 7 GB",
              "study": "it trains the study's 42 models, about 90 minutes on 2 cores"}


def discover() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(BENCH_DIR.glob("bench_*.py"))}


def _names(text: str | None) -> set[str]:
    return {n.strip().removeprefix("bench_").removesuffix(".py") for n in (text or "").split(",") if n.strip()}


def run_scripts(scripts: dict[str, Path], quick: bool, env: dict[str, str], nice: bool) -> list[dict]:
    runs = []
    for name, script in scripts.items():
        if quick and name in QUICK_SKIP:
            print(f"=== {name}: left out of a quick run ({QUICK_SKIP[name]})", flush=True)
            continue
        command = [sys.executable, str(script)]
        if quick:
            command += ["--quick"] if '"--quick"' in script.read_text() else QUICK_ARGS.get(name, [])
        if nice and hasattr(os, "nice"):
            command = ["nice", *command]
        print(f"=== {name}: {' '.join(command)}", flush=True)
        start = time.perf_counter()
        returncode = subprocess.call(command, cwd=REPO_ROOT, env=env)
        runs.append({"benchmark": name, "returncode": returncode, "wall_s": round(time.perf_counter() - start, 1)})
        print(f"=== {name}: exit {returncode} after {runs[-1]['wall_s']} s", flush=True)
    return runs


# --------------------------------------------------------------------------- aggregation

def _figure(rows: list, benchmark: str, name: str, value, unit: str = "", how: str = "") -> None:
    if value is not None:
        rows.append({"benchmark": benchmark, "figure": name, "value": value, "unit": unit, "how": how})


def _ratio(ratios: list, benchmark: str, name: str, numerator, denominator, meaning: str) -> None:
    if numerator is not None and denominator:
        ratios.append({"benchmark": benchmark, "ratio": name, "value": round(numerator / denominator, 2),
                       "meaning": meaning})


def _summarise_data(d: dict, rows: list, ratios: list) -> None:
    how = f"median of {d.get('repeats', '?')} repeats, {d.get('clips', '?')} clips"
    _figure(rows, "data", "cache read + crop", d.get("cache_read_crop_clips_per_s"), "clips/s", how)
    _figure(rows, "data", "librosa load + crop", d.get("librosa_load_crop_clips_per_s"), "clips/s", how)
    _figure(rows, "data", "generate default synthetic set", d.get("synthetic_default_generate_s"), "s", "one run")
    _figure(rows, "data", "build train cache", d.get("synthetic_train_cache_build_s"), "s", "one run")
    _ratio(ratios, "data", "cache vs librosa (throughput)", d.get("cache_read_crop_clips_per_s"),
           d.get("librosa_load_crop_clips_per_s"), "times faster reading the 32 kHz cache than decoding sources")


def _summarise_search(d: dict, rows: list, ratios: list) -> None:
    how = f"percentiles over {d.get('queries', '?')} queries, top {d.get('top_k', '?')}, dim {d.get('dim', '?')}"
    for row in d.get("search", []):
        n, used = f"{row['size']:,} {row.get('kind', 'random')} vectors", row.get("used", "ivf")
        ivf = row.get(used, {})
        _figure(rows, "search", f"exact p50 latency, {n}", row.get("exact", {}).get("p50_ms"), "ms", "20 queries")
        _figure(rows, "search", f"FAISS ({used}) p50 latency, {n}", ivf.get("p50_ms"), "ms", how)
        _figure(rows, "search", f"FAISS ({used}) p95 latency, {n}", ivf.get("p95_ms"), "ms", how)
        _figure(rows, "search", f"FAISS ({used}) recall@10, {n}", ivf.get("recall_at_10"), "", "vs exact")
        _figure(rows, "search", f"FAISS ({used}) build, {n}", ivf.get("build_s"), "s", "one run")
        _figure(rows, "search", f"FAISS ({used}) index size, {n}", ivf.get("index_gb"), "GiB",
                "serialised index (faiss.serialize_index): every code and list it holds")
        _figure(rows, "search", f"FAISS ({used}) build, resident memory added, {n}", ivf.get("rss_growth_gb"), "GiB",
                "RSS after the build minus before (a lower bound where an earlier index's freed memory is reused)")
        for key, flat in sorted(row.get("flat", {}).items()):
            if key.startswith("k_factor_"):
                _figure(rows, "search", f"FAISS (flat, {key}) p50 / recall@10, {n}",
                        f"{flat['p50_ms']} ms / {flat['recall_at_10']}", "", how)
        _ratio(ratios, "search", f"FAISS vs exact p50 latency, {n}", row.get("exact", {}).get("p50_ms"),
               ivf.get("p50_ms"), "times faster per query (p50) with FAISS")
    indexing = d.get("indexing") or {}
    how = f"{indexing.get('clips', '?')} clips of {indexing.get('clip_seconds', '?')} s, one run"
    _figure(rows, "search", "folder indexing (decode + embed)", indexing.get("index_files_per_s"), "files/s", how)
    _figure(rows, "search", "decode only", indexing.get("decode_files_per_s"), "files/s", how)
    _figure(rows, "search", "cached rebuild", indexing.get("cached_rebuild_files_per_s"), "files/s", how)
    _ratio(ratios, "search", "cached rebuild vs cold indexing", indexing.get("cached_rebuild_files_per_s"),
           indexing.get("index_files_per_s"), "times faster when embeddings are cached")
    target = d.get("target") or {}
    for kind, met in (target.get("met") or {}).items():
        _figure(rows, "search", f"goal at {target.get('size'):,} {kind} vectors: p50 <= {target.get('p50_ms')} ms, "
                f"recall@10 >= {target.get('recall_at_10')}, index <= {target.get('index_gb')} GB",
                "met" if met else "NOT met")
    _figure(rows, "search", "peak RSS", d.get("peak_rss_gb"), "GB", "whole script")


def _seconds_per_clip(model: dict) -> float | None:
    """Median seconds per step over the batch: the clips/s figure is rounded (0.2 for 0.2047), so no ratio uses it."""
    seconds = (model.get("train") or {}).get("seconds_per_step_median")
    return seconds / model["batch"] if seconds and model.get("batch") else None


def _summarise_models(d: dict, rows: list, ratios: list) -> None:
    for key, label in (("tiny", "tiny model"), ("paper_shapes", "paper shapes")):
        m = d.get(key)
        if not m:
            continue
        train = m.get("train", {})
        times = train.get("seconds_per_step_all") or []
        how = (f"batch {m.get('batch')} x {m.get('clip_seconds'):g} s; median of {len(times)} steps after "
               f"{d.get('warmup_steps', '?')} warm-up" + (f"; {train['step']}" if train.get("step") else ""))
        if times and statistics.median(times) != train.get("seconds_per_step_median"):
            how += " (median recomputed differs!)"
        _figure(rows, "models", f"{label}: training throughput", train.get("clips_per_s"), "clips/s", how)
        _figure(rows, "models", f"{label}: seconds per step", train.get("seconds_per_step_median"), "s", how)
        for when, parts in ((w, m.get("step_breakdown", {}).get(w, {})) for w in ("before", "after")):
            for part, seconds in parts.items():  # stored spectrograms / frozen text states: notebook 01's steps
                _figure(rows, "models", f"{label}: step breakdown {when} step caches, {part}", seconds, "s",
                        f"median of {d.get('repeats', '?')}, batch {m.get('batch')}")
        params = m.get("parameters", {})
        for part in ("audio_encoder", "text_encoder", "all"):
            count = params.get(part, {})
            if count:
                _figure(rows, "models", f"{label}: parameters, {part.replace('_', ' ')}",
                        f"{count['total'] / 1e6:.1f} M ({count['trainable'] / 1e6:.1f} M trainable)", "", "")
        embed = m.get("embed")
        if embed:
            how = f"eval, no grad, batch {embed.get('batch')}, median of {embed.get('repeats')} batches"
            _figure(rows, "models", f"{label}: audio embedding ({m.get('clip_seconds'):g} s clips)",
                    embed.get("audio_clips_per_s"), "clips/s", how)
            _figure(rows, "models", f"{label}: caption embedding", embed.get("captions_per_s"), "captions/s", how)
    threads = d.get("thread_use") or {}
    if threads.get("seconds_per_step_one_thread"):
        how = (f"tiny step, fp32, batch {threads['batch']} x {threads['clip_seconds']:g} s, median of "
               f"{threads['repeats']} steps")
        _figure(rows, "models", "tiny model fp32: seconds per step, one thread", threads["seconds_per_step_one_thread"],
                "s", how)
        _figure(rows, "models", "tiny model fp32: seconds per step, two threads",
                threads["seconds_per_step_two_threads"], "s", how)
        _figure(rows, "models", "tiny model fp32: seconds per step, two one-thread processes side by side",
                " / ".join(str(t) for t in threads["seconds_per_step_side_by_side"]), "s", how)
        _ratio(ratios, "models", "tiny fp32 step, two threads vs one", threads["seconds_per_step_one_thread"],
               threads["seconds_per_step_two_threads"], "times faster with both cores than with one (one run alone)")
        _figure(rows, "models", "tiny fp32 training throughput, two one-thread processes vs one two-thread process",
                threads["throughput_pair_vs_two_threads"], "x", how + " (parallel runs' default on a CPU)")
    memory = (d.get("paper_shapes") or {}).get("gpu_memory_estimate")
    if memory:
        measured, target = memory["measured_batch"], memory["target_batch"]
        _figure(rows, "models", "paper shapes: weights, gradients and AdamW state", memory["static_gb"], "GB",
                "16 B per trainable parameter")
        _figure(rows, "models", f"paper shapes: saved activations at batch {target} (fp32)",
                memory["activations_fp32_gb_at_target_batch"], "GB",
                f"autograd's saved tensors measured at batch {measured}, scaled by {target}/{measured}")
        low, high = memory["total_gb_fp16_amp_range"]
        _figure(rows, "models", f"paper recipe (batch {target}, fp16 AMP): expected GPU memory", f"{low}-{high}",
                "GB", "estimate, not a GPU measurement: the state above plus half to all of the activations "
                "(fp16 AMP); CUDA context and allocator slack come on top")
    tiny, paper = d.get("tiny") or {}, d.get("paper_shapes") or {}
    _ratio(ratios, "models", "paper shapes vs tiny, seconds per clip in training", _seconds_per_clip(paper),
           _seconds_per_clip(tiny), "times more CPU time per training clip for the paper-sized model "
           f"({(paper.get('train') or {}).get('step', 'step not named in models.json')}) than for the tiny model "
           f"({(tiny.get('train') or {}).get('step', 'step not named in models.json')})")
    _figure(rows, "models", "peak RSS", d.get("peak_rss_gb"), "GB", "whole script")


def _summarise_pipeline(d: dict, rows: list, ratios: list) -> None:
    precisions = ", ".join(d.get("precision") or ["not recorded"])
    how = f"one run, precision {precisions}" + (", --quick overrides" if d.get("quick") else "")
    for row in d.get("notebooks", []):
        _figure(rows, "pipeline", f"{row['notebook']}: execution", row.get("seconds"), "s", how + " (run_log.csv)")
        _figure(rows, "pipeline", f"{row['notebook']}: peak RSS (process tree)", row.get("peak_rss_mb"), "MB", how)
    _figure(rows, "pipeline", "all notebooks: execution", d.get("notebook_seconds_total"), "s", how)
    _figure(rows, "pipeline", f"`{d.get('command', './run_all.sh')}`: wall", d.get("wall_s"), "s", how)
    baseline = d.get("baseline")
    if baseline:
        old = f"commit {baseline.get('commit', '?')[:7]}"
        for row in baseline.get("notebooks", []):
            _figure(rows, "pipeline", f"{old}, {row['notebook']}: execution", row.get("seconds"), "s",
                    "the same command on the baseline commit, run just before, on the same machine")
        _figure(rows, "pipeline", f"{old}: wall", baseline.get("wall_s"), "s", "the same command, run just before")
        _ratio(ratios, "pipeline", f"this commit vs {old}, wall", d.get("wall_s"), baseline.get("wall_s"),
               f"times the baseline's wall time, one after the other on one machine ({precisions})")
    _figure(rows, "pipeline", "peak RSS (whole run)", d.get("peak_rss_mb"), "MB", how)
    target = d.get("target") or {}
    if target.get("met") is not None:
        _figure(rows, "pipeline", f"target: wall <= {target.get('wall_s')} s", "met" if target["met"] else "NOT met")
    _figure(rows, "pipeline", "status", d.get("status"), "", "")


def _summarise_setup(d: dict, rows: list, ratios: list) -> None:
    how = f"one run on a fresh clone of {d.get('commit', '?')}; pip cache: {d.get('pip_cache', '?')}"
    _figure(rows, "setup", "first run: create .venv and install the pins", d.get("fresh_s"), "s", how)
    _figure(rows, "setup", "second run: environment reused", d.get("reuse_s"), "s", "same clone, right after")
    _figure(rows, "setup", ".venv size", d.get("venv_gb"), "GB", "sum of file sizes")
    _ratio(ratios, "setup", "first vs second run", d.get("fresh_s"), d.get("reuse_s"),
           "times longer the first run takes to get its environment")


def _summarise_correspondences(d: dict, rows: list, ratios: list) -> None:
    for run in d.get("runs", []):
        how = (f"{run['clips']:,} clips x {run['captions']:,} captions, {run['dim']}-d, block {run['block']}; "
               f"one run")
        label = f"full-split estimate, {run['teachers']} teachers"
        _figure(rows, "correspondences", f"{label}: time", run.get("seconds"), "s", how)
        _figure(rows, "correspondences", f"{label}: peak memory added", run.get("peak_added_gb"), "GB",
                how + f"; the fp16 inputs ({run.get('fp16_inputs_gb')} GB) come on top")
    target = d.get("target") or {}
    if target.get("met") is not None:
        _figure(rows, "correspondences", f"target: <= {target.get('peak_added_gb')} GB at once at "
                f"{target.get('clips'):,} clips", "met" if target["met"] else "NOT met")


def _summarise_text_cache(d: dict, rows: list, ratios: list) -> None:
    how = f"test split, best-validation weights, precision {d.get('precision')}, mean ± sample std over seeds"
    for name, summary in (d.get("summary") or {}).items():
        std = summary.get("mAP@10 std (ddof 1)")
        value = f"{100 * summary['mAP@10 mean']:+.2f}" if name.startswith("uncached minus") else \
            f"{100 * summary['mAP@10 mean']:.2f}"
        extra = f"; {summary['seeds where uncached is better']} seeds better uncached" if \
            "seeds where uncached is better" in summary else ""
        _figure(rows, "text_cache", f"stage-1 members, {name}: test mAP@10",
                value + (f" ± {100 * std:.2f}" if std is not None else ""), "%", how + extra)


def _summarise_paper_search(d: dict, rows: list, ratios: list) -> None:
    """Search with the paper's shapes: what a user waits for, fp32 and the faster path, with the CPU named
    in each row (timings on CPUs with and without native bf16 or VNNI are not comparable), and the
    candidates the faster path was chosen from."""
    cpu, name = d.get("cpu", "CPU not recorded"), d.get("faster_path", "?")
    load = (f"load average {d.get('load_average_before', ['?'])[0]} before, {d.get('load_average_after', ['?'])[0]} "
            f"after{', under nice' if d.get('niceness') else ''}")
    how = (f"{cpu}; {d.get('windows')} windows of {d.get('window_seconds')} s every {d.get('hop_seconds')} s, batch "
           f"{d.get('batch')}, {d.get('torch_threads')} threads, median per batch, paths taking turns; {load}")
    for key, label in (("fp32", "fp32"), ("faster", name)):
        speed = d.get(key) or {}
        query_how = (f"{cpu}; median of {d.get('queries')} queries of {d.get('query_tokens')} tokens, one at a time"
                     + (f" (p90 {speed['query_ms_p90']} ms)" if "query_ms_p90" in speed else "") + f"; {load}")
        _figure(rows, "paper_search", f"{label}: audio indexed", speed.get("audio_minutes_per_minute"),
                "min of audio / min", how)
        _figure(rows, "paper_search", f"{label}: seconds per window", speed.get("seconds_per_window"), "s", how)
        _figure(rows, "paper_search", f"{label}: one text query", speed.get("query_ms_median"), "ms", query_how)
    _figure(rows, "paper_search", "faster path", f"{name}: {d.get('faster_path_means', '?')}", "",
            (d.get("choice") or {}).get("rule", "named with --path"))
    agree = f"{d.get('queries')} queries x {d.get('windows')} windows, both through the path, against fp32's top 10"
    _figure(rows, "paper_search", f"{name} vs fp32: recall@10", d.get("recall_at_10"), "", agree)
    _figure(rows, "paper_search", f"{name} vs fp32: recall@10, fp32 queries on the {name} index",
            d.get("recall_at_10_fp32_queries"), "", agree.replace("both through the path", "only the windows"))
    for side in ("audio", "text"):
        cosine = d.get(f"cosine_{side}") or {}
        if cosine:
            _figure(rows, "paper_search", f"{name} vs fp32: cosine of {side} embeddings (min / median)",
                    f"{cosine['min']} / {cosine['median']}", "", "each embedding against its fp32 twin")
    _figure(rows, "paper_search", "fp32: mean cosine between two windows' embeddings",
            d.get("fp32_window_pairwise_cosine_mean"), "", "how alike the random-weight index's windows are (1: all)")
    _figure(rows, "paper_search", f"{name} kept", {True: "yes", False: "no"}.get(d.get("kept")), "",
            d.get("kept_rule", ""))
    for other, row in sorted(((d.get("choice") or {}).get("candidates") or {}).items()):
        if other != name:  # the evidence of the choice: what the paths not kept did on the same windows
            _figure(rows, "paper_search", f"candidate {other}: indexing / query speed-up, recall@10",
                    f"{row['indexing_speedup_median_of_pairs']}x / {row['query_speedup_median_of_pairs']}x, "
                    f"{row['recall_at_10']}", "", f"{cpu}; timed in the same turns as fp32 and {name}")
    goals = d.get("goals") or {}
    if goals:
        _figure(rows, "paper_search", f"goal: {name} >= {goals['speedup']}x fp32's indexing at recall@10 >= "
                f"{goals['recall_at_10']}", "met" if goals.get("speedup_and_recall_met") else "NOT met", "", cpu)
        for key, label in (("query_met_fp32", "fp32"), ("query_met_faster", name)):
            _figure(rows, "paper_search", f"goal: one query <= {goals['query_ms']:g} ms, {label}",
                    "met" if goals.get(key) else "NOT met", "", cpu)
    for key, what in (("indexing_speedup_median_of_pairs", "indexing"), ("query_speedup_median_of_pairs", "query")):
        if d.get(key) is not None:  # stored: the median of per-pair ratios, fairer on a busy machine than two medians
            ratios.append({"benchmark": "paper_search", "ratio": f"{name} vs fp32, {what}", "value": d[key],
                           "meaning": f"times faster than fp32 (median of the ratios of pairs timed back to back; "
                                      f"{cpu})"})


SUMMARISERS = {"text_cache": _summarise_text_cache, "data": _summarise_data, "setup": _summarise_setup, "correspondences": _summarise_correspondences, "search": _summarise_search, "models": _summarise_models,
               "pipeline": _summarise_pipeline, "paper_search": _summarise_paper_search}


def _summarise_generic(name: str, d: dict, rows: list, prefix: str = "") -> None:
    """Numbers at any depth of a JSON no summariser knows (lists are skipped)."""
    for key, value in sorted(d.items()):
        if isinstance(value, dict):
            _summarise_generic(name, value, rows, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            _figure(rows, name, prefix + key, value, "", "as written")


def _shown(path: Path) -> str:
    """``results/benchmarks/...`` rather than an absolute path of the machine that ran it."""
    parts = path.resolve().parts
    if "results" not in parts:
        return path.name
    return str(Path(*parts[len(parts) - 1 - parts[::-1].index("results"):]))


def aggregate(bench_dir: Path, out_json: Path, out_md: Path, runs: list[dict] | None = None) -> dict:
    from salsa_lib.files import atomic_write_json, atomic_write_text

    sources, rows, ratios = {}, [], []
    for path in sorted(bench_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            sources[path.stem] = {"file": _shown(path), "error": str(err)}
            continue
        sources[path.stem] = {"file": _shown(path), "date": data.get("date"), "machine": data.get("machine"),
                              "cpu": _cpu_kind(data), "quick": data.get("quick", False), "data": data}
        SUMMARISERS.get(path.stem, lambda d, r, q, n=path.stem: _summarise_generic(n, d, r))(data, rows, ratios)
    result = {
        "generated": time.strftime("%Y-%m-%d %H:%M"),
        "aggregator_machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                              f"{platform.system()}, Python {platform.python_version()}",
        "source_dir": _shown(bench_dir), "runs": runs or [], "figures": rows, "ratios": ratios, "sources": sources,
    }
    atomic_write_json(out_json, result)
    atomic_write_text(out_md, markdown(result))
    return result


def _cpu_kind(data: dict) -> str:
    """The CPU a file was measured on, with whether it computes bf16 natively: timings from the two kinds
    are not comparable (without it bf16 autocast is emulated, tens of times slower than fp32)."""
    bf16 = {True: "computes bf16 natively", False: "no native bf16"}.get(data.get("cpu_native_bf16"))
    return ", ".join(part for part in (data.get("cpu"), bf16) if part)


def _cell(value) -> str:
    return f"{value:,}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def markdown(result: dict) -> str:
    lines = ["# Benchmarks", "",
             f"Generated {result['generated']} from `{result['source_dir']}` on {result['aggregator_machine']}. "
             "Every figure below is read from the JSON files of the benchmark scripts "
             "(`benchmarks/README.md` says what each measures).", ""]
    if result["runs"]:
        lines += ["| script | exit | wall (s) |", "|---|---|---|"]
        lines += [f"| bench_{r['benchmark']}.py | {r['returncode']} | {r['wall_s']} |" for r in result["runs"]]
        lines.append("")
    for name, source in result["sources"].items():
        lines += [f"## {name}", ""]
        if "error" in source:
            lines += [f"Could not read `{source['file']}`: {source['error']}", ""]
            continue
        cpu = f" ({source['cpu']})" if source.get("cpu") else ""
        lines += [f"Measured {source['date']} on {source['machine']}{cpu}" +
                  (" -- **quick run: sizes too small for the figures to mean anything**" if source["quick"] else "")
                  + f" (`{Path(source['file']).name}`).", ""]
        figures = [r for r in result["figures"] if r["benchmark"] == name]
        if figures:
            lines += ["| figure | value | unit | how |", "|---|---:|---|---|"]
            lines += [f"| {r['figure']} | {_cell(r['value'])} | {r['unit']} | {r['how']} |" for r in figures]
            lines.append("")
        ratios = [r for r in result["ratios"] if r["benchmark"] == name]
        if ratios:
            lines += ["| ratio | value | meaning |", "|---|---:|---|"]
            lines += [f"| {r['ratio']} | {r['value']}x | {r['meaning']} |" for r in ratios]
            lines.append("")
    return "\n".join(lines)


def _earlier_runs(out_json: Path) -> list[dict]:
    try:
        return json.loads(out_json.read_text()).get("runs", [])
    except (OSError, ValueError):
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated benchmark names (correspondences, data, models, paper_search, "
                        "pipeline, search, setup)")
    parser.add_argument("--skip", help="comma-separated benchmark names to leave out")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run; see above)")
    parser.add_argument("--aggregate-only", action="store_true", help="run nothing, summarise the JSON files")
    parser.add_argument("--no-nice", action="store_true", help="do not run the scripts under nice")
    parser.add_argument("--results-home", type=Path,
                        help="SALSA_HOME for the scripts and the summary (default: the project root; "
                             "a new scratch folder with --quick)")
    args = parser.parse_args(argv)
    if args.results_home is None and args.quick and not args.aggregate_only:
        args.results_home = Path(tempfile.mkdtemp(prefix="salsa_bench_quick_"))
        print(f"quick run: results under {args.results_home}")
    env = dict(os.environ)
    if args.results_home is not None:
        env["SALSA_HOME"] = str(args.results_home.resolve())  # the scripts' results_dir() follows it
    sys.path.insert(0, str(REPO_ROOT))
    from salsa_lib import paths

    root = args.results_home.resolve() if args.results_home is not None else paths.project_root()
    scripts = discover()
    only, skip = _names(args.only), _names(args.skip)
    unknown = (only | skip) - set(scripts)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; have {sorted(scripts)}")
    scripts = {n: p for n, p in scripts.items() if (not only or n in only) and n not in skip}
    runs = [] if args.aggregate_only else run_scripts(scripts, args.quick, env, nice=not args.no_nice)

    bench_dir = root / "results" / "benchmarks"  # = paths.results_dir("benchmarks") under that SALSA_HOME
    out_json = root / "results" / "benchmarks.json"
    if args.aggregate_only:  # the last runner's runs still say how the files it wrote were made
        runs = _earlier_runs(out_json)
    result = aggregate(bench_dir, out_json, out_json.with_suffix(".md"), runs)
    print(f"{len(result['figures'])} figures, {len(result['ratios'])} ratios from {len(result['sources'])} files: "
          f"{out_json} and {out_json.with_suffix('.md')}")
    return 1 if any(r["returncode"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
