"""Progress bars have a reader only outside the runner's headless kernels."""

from salsa_lib import quiet


def test_progress_is_visible_unless_the_kernel_is_headless(monkeypatch):
    monkeypatch.delenv(quiet.HEADLESS_VARIABLE, raising=False)
    assert quiet.progress_visible()
    monkeypatch.setenv(quiet.HEADLESS_VARIABLE, "1")
    assert not quiet.progress_visible()


def test_the_runner_kernel_marks_itself_headless_without_touching_the_namespace(monkeypatch):
    monkeypatch.setenv(quiet.HEADLESS_VARIABLE, "0")  # restored after the test
    assert quiet.progress_visible()
    line, = [a.split("=", 1)[1] for a in quiet.KERNEL_ARGUMENTS if a.startswith("--IPKernelApp.exec_lines=")]
    namespace = {}
    exec(line, namespace)  # what the kernel runs before the first cell
    assert not quiet.progress_visible()
    assert set(namespace) == {"__builtins__"}  # no name added to the notebook
