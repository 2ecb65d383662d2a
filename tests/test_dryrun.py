"""The paper profile's code path end to end on CPU: ``./run_all.sh --profile clotho-dryrun`` from an empty home.

PaSST-S at 30 s (three 10 s windows), a roberta-large-shaped text encoder, stage 1, the estimates, stage 2
and evaluation on a fake ClothoV2.1, so a change that would crash the paper run after hours fails here.
"""

import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_clotho_dryrun_reaches_metrics(tmp_path):
    env = {**os.environ, "SALSA_HOME": str(tmp_path)}
    done = subprocess.run([str(ROOT / "run_all.sh"), "--profile", "clotho-dryrun", "--quiet"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = tmp_path / "results" / "clotho-dryrun"
    metrics = pd.read_csv(results / "metrics.csv")
    assert list(zip(metrics.stage.astype(str), metrics.weights)) == [("1", "best"), ("1", "last"),
                                                                     ("2", "best"), ("2", "last")]
    assert list(metrics.model) == ["member0", "member0", "self_from_member0", "self_from_member0"]
    assert metrics["mAP@10"].between(0, 1).all() and (metrics.clips == 3).all()
    examples = pd.read_csv(results / "tables" / "04_readme_example_queries.csv")
    assert len(examples) == 2 * 4 and examples.overlap.between(0, 3).all()  # 3 fake clips, ids from metadata
    comparison = pd.read_csv(results / "tables" / "results_vs_paper.csv")
    assert list(comparison["our weights"]) == ["released", "last", "last"]
    members = pd.read_csv(results / "tables" / "stage1_members.csv")
    assert len(members) == 1 and members.seed[0] == 409194
