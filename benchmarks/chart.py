"""Draw run.py's panels as grouped bar charts in one PNG: ``python chart.py PANELS.json OUT.png``.

Runs in the benchmark venv (it has matplotlib; the dev venv need not). A
panel is ``{"title", "groups": [backend labels], "series": {name: [value per
group]}}``; each panel becomes one horizontal grouped bar chart, values
printed at the bars' ends.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def draw(panels: list[dict], out: str) -> None:
    """One row of axes per panel, horizontal grouped bars, saved as PNG."""
    heights = [0.6 + 0.35 * len(p["groups"]) * max(1, len(p["series"])) for p in panels]
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, sum(heights) + 0.5),
                                gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        groups, series = panel["groups"], panel["series"]
        width = 0.8 / len(series)
        for index, (name, values) in enumerate(series.items()):
            positions = [g + index * width for g in range(len(groups))]
            bars = ax.barh(positions, values, height=width, label=name)
            ax.bar_label(bars, labels=[f"{v:,.1f}" if v < 100 else f"{v:,.0f}" for v in values],
                         padding=3, fontsize=8)
        ax.set_yticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))], groups, fontsize=9)
        ax.invert_yaxis()
        ax.set_title(panel["title"], fontsize=11, loc="left")
        ax.margins(x=0.15)
        if len(series) > 1:
            ax.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(out, dpi=90)


if __name__ == "__main__":
    draw(json.loads(open(sys.argv[1]).read()), sys.argv[2])
