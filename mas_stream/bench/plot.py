"""One PNG per benchmark: accuracy matrices show forgetting at a glance, curves show its timing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.image import AxesImage

from mas_stream.bench.runner import group_runs, run_label

COLUMNS = 5


def _matrix(run: dict[str, Any]) -> np.ndarray:
    """Unevaluated cells (None) become NaN, which imshow leaves blank."""
    return np.array([[np.nan if a is None else a for a in row] for row in run["acc_matrix"]])


def mean_matrices(result_json: dict[str, Any]) -> dict[str, np.ndarray]:
    """Accuracy matrix averaged over seeds, per (method, λ)."""
    return {
        run_label(method, lam): np.mean([_matrix(run) for run in runs], axis=0)
        for (method, lam), runs in group_runs(result_json).items()
    }


def _lowest_shown(matrices: dict[str, np.ndarray]) -> float:
    """The colour scale's and the curves' floor: 0.5, lower if some accuracy is lower."""
    finite = np.concatenate([m[np.isfinite(m)] for m in matrices.values()])
    return min(0.5, math.floor(float(finite.min()) * 10) / 10) if finite.size else 0.0


def _draw_heatmaps(
    axes: np.ndarray, matrices: dict[str, np.ndarray], low: float, num_tasks: int
) -> AxesImage | None:
    """One annotated accuracy matrix per (method, λ); the last image, for the colour bar."""
    image = None
    for index, (label, matrix) in enumerate(matrices.items()):
        axis = axes[index // COLUMNS][index % COLUMNS]
        axis.set_visible(True)
        image = axis.imshow(np.ma.masked_invalid(matrix), vmin=low, vmax=1.0, cmap="viridis")
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                colour = "black" if value > low + 0.6 * (1.0 - low) else "white"
                text = f"{100 * value:.1f}"
                axis.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
        axis.set_title(label, fontsize=10)
        axis.set_xticks(range(num_tasks), [f"T{j}" for j in range(num_tasks)], fontsize=8)
        axis.set_yticks(range(num_tasks), [f"T{i}" for i in range(num_tasks)], fontsize=8)
        axis.set_xlabel("evaluated on task", fontsize=8)
        axis.set_ylabel("after training task", fontsize=8)
    return image


def _draw_curves(
    axes: np.ndarray, matrices: dict[str, np.ndarray], low: float, heat_rows: int, num_tasks: int
) -> None:
    """Per task, its accuracy after each later task, one line per (method, λ)."""
    for j in range(num_tasks):
        axis = axes[heat_rows + j // COLUMNS][j % COLUMNS]
        axis.set_visible(True)
        steps = np.arange(j, num_tasks)
        for label, matrix in matrices.items():
            axis.plot(steps, matrix[j:, j], marker="o", markersize=3, label=label)
        axis.set_title(f"accuracy on T{j}", fontsize=10)
        axis.set_xticks(range(num_tasks), [f"T{i}" for i in range(num_tasks)], fontsize=8)
        axis.set_xlim(-0.3, num_tasks - 0.7)
        axis.set_ylim(low, 1.01)
        axis.set_xlabel("after training task", fontsize=8)
        axis.grid(alpha=0.3)
    axes[heat_rows][0].set_ylabel("accuracy", fontsize=8)


def plot_results(result_json: dict[str, Any], path: str | Path) -> None:
    matrices = mean_matrices(result_json)
    split = result_json.get("protocol", {}).get("evaluation", "test")
    num_tasks = next(iter(matrices.values())).shape[0]
    heat_rows = math.ceil(len(matrices) / COLUMNS)
    curve_rows = math.ceil(num_tasks / COLUMNS)
    columns = min(COLUMNS, max(len(matrices), num_tasks))
    figure, axes = plt.subplots(
        heat_rows + curve_rows,
        columns,
        figsize=(3.2 * columns, 3.2 * (heat_rows + curve_rows) + 0.6),
        squeeze=False,
    )
    for axis in axes.flat:
        axis.set_visible(False)

    low = _lowest_shown(matrices)
    image = _draw_heatmaps(axes, matrices, low, num_tasks)
    figure.subplots_adjust(left=0.06, right=0.9, bottom=0.12, top=0.9, hspace=0.55, wspace=0.45)
    if image is not None:
        top = axes[0][0].get_position().y1
        bottom = axes[heat_rows - 1][0].get_position().y0
        colour_axis = figure.add_axes((0.92, bottom, 0.012, top - bottom))
        figure.colorbar(image, cax=colour_axis, label=f"{split} accuracy")

    _draw_curves(axes, matrices, low, heat_rows, num_tasks)
    handles, labels = axes[heat_rows][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8)

    seeds = sorted({result["seed"] for result in result_json["results"]})
    figure.suptitle(
        f"{result_json['suite']}: {split} accuracy, mean over seeds {seeds}", fontsize=12
    )
    figure.savefig(path, dpi=110)
    plt.close(figure)
