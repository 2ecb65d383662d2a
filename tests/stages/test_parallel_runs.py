"""Independent runs side by side: the worker plan, and members trained in two processes as in one."""

import json
from types import SimpleNamespace

import pytest
import torch

from salsa_lib import runs
from salsa_lib.config import Stage1Config
from salsa_lib.data import data_sources
from salsa_lib.stages import parallel_runs, precision, stage1


def _config(**changes):
    fields = dict(accelerator="cpu", devices=1, num_nodes=1, parallel_runs=0)
    return SimpleNamespace(**{**fields, **changes})


PLENTY = 64 * 2 ** 30  # memory enough for any plan below
GB = 10 ** 9


def _plan(config, n_runs, cores, memory=PLENTY):
    return tuple(parallel_runs.plan_workers(config, n_runs=n_runs, cores=cores, memory_bytes=memory)[:2])


def test_one_process_per_core_at_most_one_per_run():
    assert _plan(_config(), n_runs=3, cores=2) == (2, 1)
    assert _plan(_config(), n_runs=9, cores=16) == (9, 1)
    assert _plan(_config(), n_runs=3, cores=16) == (3, 5)
    assert _plan(_config(), n_runs=1, cores=2) == (1, 2)


def test_parallel_runs_caps_the_workers_and_one_keeps_them_in_process():
    assert _plan(_config(parallel_runs=1), n_runs=3, cores=2) == (1, 2)
    assert _plan(_config(parallel_runs=2), n_runs=9, cores=16) == (2, 8)


def test_gpu_and_ddp_runs_stay_in_this_process():
    assert _plan(_config(accelerator="gpu"), n_runs=3, cores=16) == (1, 16)
    assert _plan(_config(devices=2), n_runs=3, cores=16) == (1, 16)
    assert "GPU" in parallel_runs.plan_workers(_config(accelerator="gpu"), 3, cores=16, memory_bytes=PLENTY).why


def test_workers_fit_the_available_memory_and_the_line_says_why():
    per_run = parallel_runs.WORKER_MEMORY_MB * 2 ** 20
    laptop = parallel_runs.plan_workers(_config(), n_runs=9, cores=8, memory_bytes=16 * 2 ** 30)  # 8 cores, 16 GB
    assert laptop.workers == 16 * 2 ** 30 // per_run < 8 and laptop.workers * per_run <= 16 * 2 ** 30
    assert laptop.threads == 8 // laptop.workers
    line = parallel_runs.describe(laptop, 9, "students")
    assert line == ("training 9 students in 4 processes, 2 threads each (8 cores, 16.0 GiB available at 4.0 GiB "
                    "per run (4 fit), 9 runs; limited by memory)")  # as docs/stages.md quotes it
    assert line.startswith(f"training 9 students in {laptop.workers} processes, {laptop.threads} threads each")
    assert "8 cores" in line and "16.0 GiB available" in line and "limited by memory" in line
    # memory for one run only: the runs stay in this process, on every core
    small = parallel_runs.plan_workers(_config(), n_runs=9, cores=8, memory_bytes=per_run + 1)
    assert small[:2] == (1, 8) and "one after the other on 8 threads" in parallel_runs.describe(small, 9, "students")
    # never below one worker, even when the memory looks short
    assert _plan(_config(), n_runs=3, cores=2, memory=10 ** 6) == (1, 2)
    roomy = parallel_runs.plan_workers(_config(), n_runs=3, cores=2, memory_bytes=PLENTY)
    assert roomy.workers == 2 and "limited by cores" in roomy.why


def test_in_process_runs_keep_their_order_and_announce_each():
    seen = []
    assert parallel_runs.run_all(pow, [(2, 3), (3, 2)], workers=1, threads=1, announce=seen.append) == [8, 9]
    assert seen == [8, 9]


def test_worker_errors_reach_the_caller():
    with pytest.raises(ZeroDivisionError):
        parallel_runs.run_all(divmod, [(1, 1), (1, 0)], workers=2, threads=1)


def test_runs_that_start_with_idle_workers_get_their_cores():
    assert parallel_runs.thread_plan(3, workers=2, cores=2) == [1, 1, 2]  # the third member
    assert parallel_runs.thread_plan(9, workers=2, cores=2) == [1] * 8 + [2]  # the ninth student
    assert parallel_runs.thread_plan(2, workers=2, cores=2) == [1, 1]
    assert parallel_runs.thread_plan(3, workers=3, cores=16) == [5, 5, 5]  # one round: shared
    assert parallel_runs.thread_plan(5, workers=3, cores=12) == [4, 4, 4, 6, 12]
    assert parallel_runs.thread_plan(1, workers=1, cores=2) == [2]


def _threads() -> int:
    return torch.get_num_threads()


def test_each_run_trains_on_the_threads_the_plan_gave_it():
    assert parallel_runs.run_all(_threads, [(), (), ()], workers=2, threads=1) == [1, 1, 2]


def test_a_run_dispatched_first_gets_the_first_rounds_threads_and_results_stay_in_order():
    # the third run goes first: it shares the cores; the first, dispatched last, gets both
    assert parallel_runs.run_all(_threads, [(), (), ()], workers=2, threads=1, order=[2, 1, 0]) == [2, 1, 1]
    assert parallel_runs.run_all(pow, [(2, 3), (3, 2), (2, 2)], workers=2, threads=1, order=[1, 2, 0]) == [8, 9, 4]
    with pytest.raises(ValueError, match="not a permutation"):
        parallel_runs.run_all(pow, [(2, 3), (3, 2)], workers=2, threads=1, order=[0, 0])


def test_the_longest_family_is_dispatched_first_members_of_a_family_in_their_order():
    families = ["passt_small", "passt_small", "mobilenet_small", "frames_small"]
    assert stage1.longest_first(families) == [3, 0, 1, 2]
    assert stage1.longest_first(["passt_small", "mobilenet_small", "frames_small"]) == [2, 0, 1]
    assert stage1.longest_first(["someone_elses", "frames_small"]) == [1, 0]  # the others after it
    assert stage1.longest_first(["mobilenet_small", "someone_elses", "passt_small"]) == [0, 1, 2]  # as given


@pytest.mark.slow
def test_members_trained_in_two_processes_equal_those_trained_in_one(tiny_home, tiny_stage1, monkeypatch):
    data = data_sources.load_data_config("test")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda *a: False)  # what auto sees (in this process)
    config = tiny_stage1.replace(members=2, parallel_runs=1, precision="auto")
    stage1.train_members(config, data, progress=False)
    sequential = [json.loads((runs.member_dir("test", k) / runs.RECORD).read_text()) for k in range(2)]
    weights = [torch.load(runs.checkpoint(runs.member_dir("test", k)), weights_only=True)["state_dict"] for k in range(2)]
    assert [r["precision"] for r in sequential] == ["32-true", "32-true"]  # resolved, and recorded

    parallel = config.replace(parallel_runs=0, precision="32-true")  # workers resolve nothing injected
    # auto recorded as what it resolved to: the same run as an explicit 32-true, so force to train again
    assert stage1.train_members(parallel, data, progress=False, force=True)["seed"].tolist() == [409194, 409195]
    for k in range(2):
        record = json.loads((runs.member_dir("test", k) / runs.RECORD).read_text())
        assert record["run"] == sequential[k]["run"] and "parallel_runs" not in record["run"]
        again = torch.load(runs.checkpoint(runs.member_dir("test", k)), weights_only=True)["state_dict"]
        assert again.keys() == weights[k].keys()
        for name, tensor in weights[k].items():  # one thread instead of two: the same run up to rounding
            torch.testing.assert_close(again[name], tensor, atol=1e-4, rtol=1e-3, msg=name)
