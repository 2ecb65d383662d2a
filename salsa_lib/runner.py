"""Run the numbered notebooks headlessly with papermill: ``python -m salsa_lib.runner``.

Why a runner and not a loop in bash: parameters are validated against the stage configs before
anything runs, a notebook that is already current is skipped, and a failure names the notebook and
the cell while earlier results stay intact (executed notebooks only replace their predecessor when
they finish).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from salsa_lib import paths
from salsa_lib.config import EVERY_STAGE_FIELDS, StageConfig
from salsa_lib.errors import ConfigError, SalsaError
from salsa_lib.files import atomic_write_csv, atomic_write_json
from salsa_lib.profiles import FORCE_STAGES, NOTEBOOK_STAGES, PROFILES, get_profile
from salsa_lib.quiet import KERNEL_ARGUMENTS

KERNEL_NAME = "salsa"  # registered by scripts/bootstrap.sh in the project's environment


@dataclass(frozen=True)
class Step:
    notebook: Path
    config: StageConfig
    stage: str  # the key of STAGE_CONFIGS whose config this is (data, stage1, ...)

    @property
    def name(self) -> str:
        return self.notebook.stem


class NotebookFailed(SalsaError):
    """A notebook raised; the message names the notebook, the cell and the error."""


def plan(profile_name: str, overrides: dict[str, str], notebooks_dir: Path | None = None) -> list[Step]:
    """The profile's notebooks in order, each with its validated config (overrides applied)."""
    profile = get_profile(profile_name)
    stages = _apply_overrides(profile.stage_configs(), overrides)
    steps = []
    for notebook in sorted(Path(notebooks_dir or paths.notebooks_dir()).glob("[0-9][0-9]_*.ipynb")):
        stage = NOTEBOOK_STAGES.get(notebook.name[:2])
        if stage not in stages:
            continue
        steps.append(Step(notebook, stages[stage], stage))
    return steps


def _apply_overrides(stages: dict[str, StageConfig], overrides: dict[str, str]) -> dict[str, StageConfig]:
    """Apply ``-p KEY VALUE`` overrides; see ``resolve_override`` for which stages a KEY reaches."""
    changes: dict[str, dict[str, object]] = {stage: {} for stage in stages}
    for key, text in overrides.items():
        for stage, name in resolve_override(stages, key):
            changes[stage][name] = stages[stage].parse_value(name, text)
    return {stage: config.replace(**changes[stage]) for stage, config in stages.items()}


def resolve_override(stages: dict[str, StageConfig], key: str) -> list[tuple[str, str]]:
    """The (stage, field) pairs that ``-p KEY`` sets.

    ``stage1.seed`` names one stage. An unqualified name must be unambiguous: defined by one stage,
    or a hardware field (same meaning everywhere). Anything else is refused with the stages to choose.
    """
    if key == "profile" or key.endswith(".profile"):
        raise ConfigError("set the profile with --profile NAME, not -p profile")
    stage, _, name = key.rpartition(".")
    if stage:
        if stage not in stages:
            raise ConfigError(f"-p {key}: unknown stage {stage!r}; stages are {list(stages)}")
        if name not in stages[stage].field_names():
            raise ConfigError(f"-p {key}: {stage} has no parameter {name!r}; it takes {stages[stage].field_names()}")
        return [(stage, name)]
    owners = [stage for stage, config in stages.items() if name in config.field_names()]
    if not owners:
        known = sorted({n for config in stages.values() for n in config.field_names()} - {"profile"})
        raise ConfigError(f"unknown parameter {name!r}; this profile's notebooks take {known}")
    if len(owners) > 1 and name not in EVERY_STAGE_FIELDS:
        choices = " or ".join(f"-p {stage}.{name}" for stage in owners)
        raise ConfigError(f"-p {name} is ambiguous: it is defined by the stages {owners}; say {choices}")
    return [(stage, name) for stage in owners]


def select(steps: list[Step], start: str | None = None, only: str | None = None) -> list[Step]:
    numbers = [s.name[:2] for s in steps]
    for wanted in filter(None, (start, only)):
        if wanted.zfill(2) not in numbers:
            raise ConfigError(f"no notebook numbered {wanted!r}; this profile has {numbers}")
    if only:
        return [s for s in steps if s.name[:2] == only.zfill(2)]
    if start:
        return [s for s in steps if s.name[:2] >= start.zfill(2)]
    return steps


def step_key(step: Step, upstream_key: str) -> str:
    """Changes when the notebook, its parameters, the library code or any earlier step changes."""
    digest = hashlib.sha256(step.notebook.read_bytes())
    digest.update(json.dumps(step.config.to_params(), sort_keys=True).encode())
    for source in sorted(Path(paths.REPO_ROOT, "salsa_lib").rglob("*.py")):
        digest.update(source.read_bytes())
    digest.update(upstream_key.encode())
    return digest.hexdigest()


def run(steps: list[Step], profile: str, *, force: bool = False, quiet: bool = False) -> None:
    out_dir = paths.results_dir(profile) / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    upstream = _upstream_key(out_dir, steps[0]) if steps else ""
    for step in steps:
        key = step_key(step, upstream)
        stamp_path = out_dir / f"{step.name}.stamp.json"
        if not force and _is_current(stamp_path, key, out_dir / f"{step.name}.ipynb"):
            print(f"[{step.name}] up to date, skipped (use --force to rerun)", flush=True)
        else:
            seconds = _execute(step, out_dir, quiet, force)
            atomic_write_json(stamp_path, {"key": key, "params": step.config.to_params(), "seconds": seconds})
            _log(profile, step, "ok", seconds)
        upstream = key


def _upstream_key(out_dir: Path, first: Step) -> str:
    """Key of the step just before ``first`` (so --from/--only still chain to earlier results)."""
    earlier = sorted(p for p in out_dir.glob("*.stamp.json") if p.name[:2] < first.name[:2])
    return json.loads(earlier[-1].read_text())["key"] if earlier else ""


def _is_current(stamp_path: Path, key: str, executed: Path) -> bool:
    try:
        return executed.exists() and json.loads(stamp_path.read_text())["key"] == key
    except (OSError, ValueError, KeyError):
        return False


def _execute(step: Step, out_dir: Path, quiet: bool, force: bool = False) -> float:
    import papermill  # imported here: it is slow to import and only the runner needs it

    running = out_dir / f"{step.name}.running.ipynb"
    parameters = {**step.config.to_params(), **({"force": force} if step.stage in FORCE_STAGES else {})}
    print(f"[{step.name}] running ...", flush=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(step.notebook), str(running), parameters=parameters,
            kernel_name=KERNEL_NAME, cwd=str(step.notebook.parent),
            progress_bar=not quiet, log_output=not quiet, extra_arguments=KERNEL_ARGUMENTS,
        )
    except papermill.PapermillExecutionError as err:
        failed = out_dir / f"{step.name}.failed.ipynb"
        os.replace(running, failed)
        _log(step.config.profile, step, "failed", time.perf_counter() - start)
        raise NotebookFailed(
            f"notebook {step.notebook.name} failed in cell In[{err.exec_count}] "
            f"with {err.ename}: {err.evalue}\n  executed copy with the traceback: {failed}"
        ) from None
    seconds = time.perf_counter() - start
    os.replace(running, out_dir / f"{step.name}.ipynb")
    (out_dir / f"{step.name}.failed.ipynb").unlink(missing_ok=True)  # an older failure is now history
    print(f"[{step.name}] done in {seconds:.1f} s", flush=True)
    return seconds


def _log(profile: str, step: Step, status: str, seconds: float) -> None:
    """Append to results/<profile>/run_log.csv (rewritten atomically: the log is tiny)."""
    log_path = paths.results_dir(profile) / "run_log.csv"
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "notebook": step.name, "status": status,
           "seconds": round(seconds, 2), "params": json.dumps(step.config.to_params(), sort_keys=True)}
    old = pd.read_csv(log_path) if log_path.exists() else pd.DataFrame(columns=list(row))
    atomic_write_csv(log_path, pd.concat([old, pd.DataFrame([row])], ignore_index=True))


def _profiles_help() -> str:
    """Every profile with its description, from ``PROFILES`` (the help cannot fall behind it)."""
    width = max(map(len, PROFILES)) + 2
    lines = ["profiles:"]
    for name, profile in PROFILES.items():
        wrapped = textwrap.wrap(profile.description, 78 - width - 2)
        lines += [f"  {name:<{width}}{wrapped[0]}"] + [f"  {'':<{width}}{line}" for line in wrapped[1:]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_all.sh", description=__doc__.splitlines()[0], epilog=_profiles_help(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny",
                        help=f"one of {', '.join(PROFILES)} (default tiny; each is described below)")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="override a notebook parameter (repeatable): STAGE.NAME, e.g. -p stage1.seed 3, "
                             "or a name one stage defines or every stage shares, e.g. -p n_train_clips 600 "
                             "or -p precision 32-true")
    parser.add_argument("--from", dest="start", metavar="NN", help="run from notebook NN on")
    parser.add_argument("--only", metavar="NN", help="run notebook NN only")
    parser.add_argument("--force", action="store_true",
                        help="rerun notebooks that are up to date and retrain models they would reuse")
    parser.add_argument("--quiet", action="store_true", help="no cell output or progress bars")
    parser.add_argument("--check", action="store_true",
                        help="run nothing: say item by item whether the profile's data, weights, GPU and disk are "
                             "ready (exit 1 when something required is missing). The check downloads nothing; "
                             "run_all.sh may first pip-install the pinned packages into .venv, as on every call")
    parser.add_argument("--notebooks-dir", type=Path, help=argparse.SUPPRESS)  # for tests
    args = parser.parse_args(argv)
    if args.check:
        return _check(args.profile)
    try:
        overrides = dict(args.p)
        steps = select(plan(args.profile, overrides, args.notebooks_dir), args.start, args.only)
        start = time.perf_counter()
        run(steps, args.profile, force=args.force, quiet=args.quiet)
    except SalsaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"all done in {time.perf_counter() - start:.1f} s; results in {paths.results_dir(args.profile)}")
    return 0


def _check(profile_name: str) -> int:
    from salsa_lib import readiness  # lazy: it imports torch and transformers, which only --check needs

    try:
        profile = get_profile(profile_name)
    except SalsaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"readiness of profile {profile_name!r} ({profile.description})")
    text, status = readiness.report(readiness.check(profile))
    print(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
