"""Independent runs side by side: the worker plan, and members trained in two processes as in one."""

import json
import multiprocessing
from types import SimpleNamespace

import pytest
import torch

from salsa_lib import data_sources, parallel_runs, precision, runs, stage1
from salsa_lib.config import Stage1Config


def _config(**changes):
    fields = dict(accelerator="cpu", devices=1, num_nodes=1, parallel_runs=0)
    return SimpleNamespace(**{**fields, **changes})


def test_one_process_per_core_at_most_one_per_run():
    assert parallel_runs.plan_workers(_config(), n_runs=3, cores=2) == (2, 1)
    assert parallel_runs.plan_workers(_config(), n_runs=9, cores=16) == (9, 1)
    assert parallel_runs.plan_workers(_config(), n_runs=3, cores=16) == (3, 5)
    assert parallel_runs.plan_workers(_config(), n_runs=1, cores=2) == (1, 2)


def test_parallel_runs_caps_the_workers_and_one_keeps_them_in_process():
    assert parallel_runs.plan_workers(_config(parallel_runs=1), n_runs=3, cores=2) == (1, 2)
    assert parallel_runs.plan_workers(_config(parallel_runs=2), n_runs=9, cores=16) == (2, 8)


def test_gpu_and_ddp_runs_stay_in_this_process():
    assert parallel_runs.plan_workers(_config(accelerator="gpu"), n_runs=3, cores=16) == (1, 16)
    assert parallel_runs.plan_workers(_config(devices=2), n_runs=3, cores=16) == (1, 16)


def test_in_process_runs_keep_their_order_and_announce_each():
    seen = []
    assert parallel_runs.run_all(pow, [(2, 3), (3, 2)], workers=1, threads=1, announce=seen.append) == [8, 9]
    assert seen == [8, 9]


def test_worker_errors_reach_the_caller():
    with pytest.raises(ZeroDivisionError):
        parallel_runs.run_all(divmod, [(1, 1), (1, 0)], workers=2, threads=1)


@pytest.fixture
def pool_of(monkeypatch):
    """This process as a worker of a pool with ``cores`` cores and ``running`` runs in progress."""
    threads = torch.get_num_threads()

    def make(cores: int, running: int):
        counter = multiprocessing.get_context("spawn").Value("i", running)
        monkeypatch.setattr(parallel_runs, "_running", counter)
        monkeypatch.setattr(parallel_runs, "_pool_cores", cores)
        return counter

    yield make
    torch.set_num_threads(threads)


def test_the_last_run_of_a_round_takes_the_idle_cores(pool_of):
    running = pool_of(cores=2, running=2)
    parallel_runs.share_cores()
    assert torch.get_num_threads() == 1
    running.value = 1  # its neighbour finished and nothing is queued
    parallel_runs.share_cores()
    assert torch.get_num_threads() == 2


def test_a_run_counts_itself_while_it_runs_and_not_after(pool_of):
    running = pool_of(cores=4, running=1)
    assert parallel_runs._counted(lambda: (running.value, torch.get_num_threads())) == (2, 2)
    assert running.value == 1


def test_share_cores_does_nothing_outside_a_pool():
    threads = torch.get_num_threads()
    assert parallel_runs._running is None
    parallel_runs.share_cores()
    assert torch.get_num_threads() == threads


def _threads_at_barrier(barrier) -> int:
    barrier.wait(timeout=60)  # both runs in progress at once
    parallel_runs.share_cores()
    threads = torch.get_num_threads()
    barrier.wait(timeout=60)  # neither finishes before both have looked
    return threads


def test_two_runs_in_progress_share_two_cores_one_thread_each():
    with multiprocessing.get_context("spawn").Manager() as manager:
        barrier = manager.Barrier(2)
        assert parallel_runs.run_all(_threads_at_barrier, [(barrier,), (barrier,)], workers=2, threads=1) == [1, 1]


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
    assert stage1.train_members(parallel, data, progress=False)["seed"].tolist() == [409194, 409195]
    for k in range(2):
        record = json.loads((runs.member_dir("test", k) / runs.RECORD).read_text())
        assert record["run"] != sequential[k]["run"] and "parallel_runs" not in record["run"]
        again = torch.load(runs.checkpoint(runs.member_dir("test", k)), weights_only=True)["state_dict"]
        assert again.keys() == weights[k].keys()
        for name, tensor in weights[k].items():  # one thread instead of two: the same run up to rounding
            torch.testing.assert_close(again[name], tensor, atol=1e-4, rtol=1e-3, msg=name)
