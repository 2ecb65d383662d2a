"""Cores and memory as a container limits them, read from fake cgroup files (v2 and v1)."""

from salsa_lib.stages import resources


def _self_cgroup(tmp_path, text):
    path = tmp_path / "self_cgroup"
    path.write_text(text)
    return path


def _write(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_cgroup_v2_quota_caps_the_affinity(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "docker" / "abc", **{"cpu.max": "200000 100000\n"})  # docker run --cpus 2
    _write(root, **{"cpu.max": "max 100000\n"})
    me = _self_cgroup(tmp_path, "0::/docker/abc\n")
    assert resources.cpu_quota(root, me) == 2.0
    assert resources.available_cores(root, me, affinity=16) == 2
    assert resources.available_cores(root, me, affinity=1) == 1  # the quota never raises the affinity


def test_a_fractional_quota_rounds_up_and_the_tightest_parent_wins(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "a" / "b", **{"cpu.max": "350000 100000\n"})
    _write(root / "a", **{"cpu.max": "150000 100000\n"})  # a parent's quota also binds
    me = _self_cgroup(tmp_path, "0::/a/b\n")
    assert resources.cpu_quota(root, me) == 1.5
    assert resources.available_cores(root, me, affinity=16) == 2


def test_no_quota_leaves_the_affinity(tmp_path):
    root = tmp_path / "cgroup"
    _write(root, **{"cpu.max": "max 100000\n"})
    me = _self_cgroup(tmp_path, "0::/\n")
    assert resources.cpu_quota(root, me) is None
    assert resources.available_cores(root, me, affinity=16) == 16
    # nothing readable at all (not Linux, or no cgroup file system)
    assert resources.available_cores(tmp_path / "missing", tmp_path / "missing_self", affinity=3) == 3


def test_cgroup_v1_cfs_quota(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "cpu,cpuacct" / "docker" / "abc", **{"cpu.cfs_quota_us": "300000\n", "cpu.cfs_period_us": "100000\n"})
    me = _self_cgroup(tmp_path, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert resources.cpu_quota(root, me) == 3.0
    assert resources.available_cores(root, me, affinity=16) == 3
    _write(root / "cpu,cpuacct" / "docker" / "abc", **{"cpu.cfs_quota_us": "-1\n"})  # v1's "no quota"
    assert resources.available_cores(root, me, affinity=16) == 16


def test_memory_is_capped_by_a_cgroup_limit(tmp_path):
    root = tmp_path / "cgroup"
    gib = 2 ** 30
    _write(root / "box", **{"memory.max": f"{8 * gib}\n", "memory.current": f"{3 * gib}\n"})
    me = _self_cgroup(tmp_path, "0::/box\n")
    assert resources.available_memory(root, me, machine_available=20 * gib) == 5 * gib
    assert resources.available_memory(root, me, machine_available=2 * gib) == 2 * gib
    _write(root / "box", **{"memory.max": "max\n"})  # no limit: the machine's figure
    assert resources.available_memory(root, me, machine_available=20 * gib) == 20 * gib


def test_memory_v1_limit_and_its_no_limit_value(tmp_path):
    root = tmp_path / "cgroup"
    gib = 2 ** 30
    folder = root / "memory" / "job"
    _write(folder, **{"memory.limit_in_bytes": f"{4 * gib}\n", "memory.usage_in_bytes": f"{1 * gib}\n"})
    me = _self_cgroup(tmp_path, "9:memory:/job\n")
    assert resources.available_memory(root, me, machine_available=20 * gib) == 3 * gib
    _write(folder, **{"memory.limit_in_bytes": "9223372036854771712\n"})  # v1's "no limit"
    assert resources.available_memory(root, me, machine_available=20 * gib) == 20 * gib


def test_this_machine_answers_with_positive_figures():
    assert resources.available_cores() >= 1 and resources.available_memory() > 0
