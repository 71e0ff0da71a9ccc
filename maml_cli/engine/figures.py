"""Figures that show what adaptation does, per kind of task.

For sinusoid regression this is the MAML paper's Figure 2 (left): the meta-learned
initialisation before adaptation and after 1 and 10 gradient steps on K support points,
against the true sine.
"""

from __future__ import annotations

import torch

from maml_cli.data.sinusoid import SinusoidTasks


def sinusoid_figure(tasks: SinusoidTasks, algorithm, num_tasks: int = 3, steps=(1, 10)):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    generator = tasks.split_generator("val")
    amplitude, phase, frequency = tasks.sample_task_parameters(num_tasks, generator)
    episodes = tasks.episodes_for(amplitude, phase, frequency, generator)
    low, high = tasks.x_range
    grid = torch.linspace(low, high, 200, device=tasks.device, dtype=tasks.dtype)
    grid = grid.reshape(1, -1, 1).expand(num_tasks, -1, -1)
    curves = {}
    for k in (0, *steps):
        params = algorithm.adapt(episodes.support_x, episodes.support_y, steps=k)
        with torch.no_grad():
            curves[k] = algorithm.batched_forward(params, grid).cpu()
    truth = tasks.curve(grid, amplitude, phase, frequency).cpu()
    x = grid[0, :, 0].cpu()

    fig, axes = plt.subplots(1, num_tasks, figsize=(4.2 * num_tasks, 3.4), sharey=True)
    for i, ax in enumerate(axes):
        ax.plot(x, truth[i, :, 0], color="tab:red", lw=2, label="ground truth")
        for k, style in zip((0, *steps), (":", "--", "-")):
            label = "pre-update" if k == 0 else f"{k} grad step{'s' if k > 1 else ''}"
            ax.plot(x, curves[k][i, :, 0], ls=style, color="tab:green", label=label)
        ax.scatter(
            episodes.support_x[i, :, 0].cpu(),
            episodes.support_y[i, :, 0].cpu(),
            marker="^",
            color="tab:purple",
            zorder=3,
            label=f"{tasks.shots} support points",
        )
        ax.set_title(f"A={amplitude[i].item():.2f}, phase={phase[i].item():.2f}")
        ax.set_xlabel("x")
    axes[0].set_ylabel("y")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


_FIGURES = {SinusoidTasks: sinusoid_figure}


def adaptation_figure(tasks, algorithm):
    """A matplotlib figure for this kind of task, or None where there is none."""
    draw = _FIGURES.get(type(tasks))
    return draw(tasks, algorithm) if draw is not None else None
