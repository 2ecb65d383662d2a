"""What a notebook shows a reader: metrics in percent with two decimals, in the paper's order."""

import numpy as np
import pandas as pd

from salsa_lib import reports


def test_percent_view_shows_two_decimals_and_marks_the_unit():
    frame = pd.DataFrame({"member": [0, 1], "R@1": [0.3, 0.35], "mAP@10": [0.545833, np.nan],
                          "rise (points)": [1.5, -0.25]})
    shown = reports.percent_view(frame, fractions=["R@1", "mAP@10"], points=["rise (points)"])
    assert list(shown.columns) == ["member", "R@1 (%)", "mAP@10 (%)", "rise (points)"]
    assert list(shown["R@1 (%)"]) == ["30.00", "35.00"] and list(shown["mAP@10 (%)"]) == ["54.58", "n/a"]
    assert list(shown["rise (points)"]) == ["1.50", "-0.25"] and list(shown.member) == [0, 1]
    assert frame["R@1"].tolist() == [0.3, 0.35]  # the table itself (what is written to disk) keeps fractions


def test_metrics_in_the_paper_order():
    assert reports.METRICS == ("mAP@10", "R@1", "R@5", "R@10")
