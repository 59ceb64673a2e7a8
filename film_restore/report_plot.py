"""The report's small per-track plot: identity (input, output) and strength over the track's frames, as a PNG data URI."""
from __future__ import annotations

import base64
import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Plot size in inches at PLOT_DPI: 360 x 140 px, small enough to sit in a table row.
PLOT_SIZE = (3.6, 1.4)
PLOT_DPI = 100


def track_plot(series: dict) -> str:
    """data:image/png;base64,... of series (lists "frame", "identity_in", "identity_out", "strength")."""
    figure = Figure(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.1, 0.2, 0.62, 0.72))
    frames = series["frame"]
    axes.plot(frames, series["identity_in"], color="tab:gray", linewidth=1, label="identity in")
    axes.plot(frames, series["identity_out"], color="tab:blue", linewidth=1, label="identity out")
    axes.plot(frames, series["strength"], color="tab:orange", linewidth=1, drawstyle="steps-mid", label="strength")
    axes.set_ylim(-0.05, 1.05)
    axes.set_xlabel("frame", fontsize=7, labelpad=1)
    axes.tick_params(labelsize=6, length=2, pad=1)
    axes.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
