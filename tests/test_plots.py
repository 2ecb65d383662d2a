"""The recurring pictures: outlined heatmap cells sit on the cells the mask names."""

import numpy as np
from matplotlib.figure import Figure

from salsa_lib import plots


def test_outline_cells_outlines_each_true_cell_at_its_row_and_column():
    mask = np.zeros((3, 4), dtype=bool)
    mask[0, 2] = mask[2, 1] = True
    ax = Figure().subplots()  # no window, no pyplot state
    plots.outline_cells(ax, mask, plots.OTHER_MATCH)
    corners = sorted(patch.get_xy() for patch in ax.patches)
    assert corners == [(1, 2), (2, 0)]  # (column, row): a heatmap's x is the column
    assert all(not patch.get_fill() for patch in ax.patches)
