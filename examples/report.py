"""Figures and the Markdown report of the end-to-end demo (``examples/end_to_end.py``).

- ``image_mosaic`` / ``save_grid_figure`` / ``save_reconstruction_figure``: sample and
  reconstruction grids;
- ``save_usage_figure``: bin-usage histograms per latent dimension;
- ``save_curves_figure``: training losses;
- ``summary_rows`` / ``write_report``: the terminal summary and ``report.md``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from examples.presets import SMOKE_NOTE

# ----------------------------------------------------------------------------- figures


def image_mosaic(images: torch.Tensor, rows: int) -> np.ndarray:
    """images (n, c, s, s) in [-1, 1] -> (rows*s, cols*s[, 3]) float in [0, 1], 1-pixel gaps."""
    n, c, s, _ = images.shape
    cols = math.ceil(n / rows)
    pad = 1
    canvas = np.ones(((s + pad) * rows - pad, (s + pad) * cols - pad, c), dtype=np.float32)
    imgs = ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[r * (s + pad) : r * (s + pad) + s, q * (s + pad) : q * (s + pad) + s] = imgs[i]
    return canvas[..., 0] if c == 1 else canvas


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# A mosaic is drawn at one whole number of screen pixels per image pixel, the smallest that makes
# the larger side of the figure's largest mosaic at least this many pixels (16x16 digits in a 10x10
# grid: 4, a 676-pixel square), so every image pixel is an even block.
MOSAIC_PIXELS = 600
FIGURE_DPI = 100


def _save_mosaics(path: Path, panels: list[tuple[str, np.ndarray]], vertical: bool, ylabel: str | None = None) -> None:
    """Saves the mosaics (title, array in [0, 1]) side by side (or one above the other), each at the same
    whole-number zoom, with exact pixel geometry (no resampling between pixel sizes)."""
    plt = _pyplot()
    zoom = max(1, math.ceil(MOSAIC_PIXELS / max(max(m.shape[:2]) for _, m in panels)))
    sizes = [(m.shape[1] * zoom, m.shape[0] * zoom) for _, m in panels]
    title, pad, left = 26, 12, 12 + (22 if ylabel else 0)
    if vertical:
        width, height = left + max(w for w, _ in sizes) + pad, sum(h + title for _, h in sizes) + pad * (len(sizes) + 1)
    else:
        width, height = left + sum(w for w, _ in sizes) + pad * len(sizes), title + max(h for _, h in sizes) + 2 * pad
    fig = plt.figure(figsize=(width / FIGURE_DPI, height / FIGURE_DPI), dpi=FIGURE_DPI)
    x, top = left, height - pad
    for (name, mosaic), (w, h) in zip(panels, sizes):
        top -= title
        ax = fig.add_axes((x / width, (top - h) / height, w / width, h / height))
        ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
        if ylabel:
            ax.set_ylabel(ylabel, fontsize=9)
        if vertical:
            top -= h + pad
        else:
            x += w + pad
            top += title
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)


def save_grid_figure(path: Path, panels: list[tuple[str, torch.Tensor, int]], ylabel: str | None = None) -> None:
    """One image mosaic per panel (title, images (n, c, s, s), rows), side by side."""
    _save_mosaics(path, [(title, image_mosaic(images, rows)) for title, images, rows in panels], vertical=False, ylabel=ylabel)


def save_reconstruction_figure(path: Path, real: torch.Tensor, recons: dict[str, torch.Tensor]) -> None:
    """Rows: real validation images, then the reconstruction of each tokenizer."""
    rows = [("real", real)] + [(f"{k.upper() if k == 'fsq' else 'iFSQ'} reconstruction", v) for k, v in recons.items()]
    _save_mosaics(path, [(title, image_mosaic(images, 1)) for title, images in rows], vertical=True)


def save_usage_figure(path: Path, counts: dict[str, np.ndarray], levels: list[int]) -> None:
    """Bin-usage histograms: counts[kind] (d, L) level frequencies, one subplot per dimension."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    d = len(levels)
    fig, axes = plt.subplots(1, d, figsize=(2.6 * d, 2.4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        x = np.arange(levels[i])
        width = 0.8 / len(counts)
        for j, (kind, c) in enumerate(counts.items()):
            freq = c[i, : levels[i]] / max(1, c[i].sum())
            ax.bar(x + (j - (len(counts) - 1) / 2) * width, freq, width=width, label="FSQ (tanh)" if kind == "fsq" else "iFSQ (sigmoid)")
        ax.axhline(1.0 / levels[i], color="k", lw=0.8, ls="--")
        ax.set_title(f"latent dim {i}", fontsize=8)
        ax.set_xlabel("level index", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # level indices are whole numbers
        ax.tick_params(labelsize=6)
    axes[0][0].set_ylabel("frequency (validation)", fontsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_curves_figure(path: Path, curves: dict[str, list[float]]) -> None:
    """Training loss per stage (moving average over 25 steps), log scale."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(2.8 * len(curves), 2.4), squeeze=False)
    for ax, (name, losses) in zip(axes[0], curves.items()):
        y = np.asarray(losses, dtype=np.float64)
        k = min(25, len(y))
        smooth = np.convolve(y, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(len(smooth)) + k - 1, smooth, lw=1)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)



# ----------------------------------------------------------------------------- report


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def summary_rows(metrics: dict) -> list[tuple[str, str]]:
    rows = []
    for kind, m in metrics.get("tokenizers", {}).items():
        name = "FSQ" if kind == "fsq" else "iFSQ"
        rows.append((f"{name} tokenizer PSNR / SSIM", f"{fmt(m['psnr'], 2)} dB / {fmt(m['ssim'])}"))
        rows.append((f"{name} utilization / codebook usage", f"{fmt(m['utilization'])} / {fmt(m['codebook_usage'], 4)}"))
    base = metrics.get("baselines", {})
    random_fd = base.get("fd_random_tokens")
    for name in ("ar", "diffusion"):
        if name in metrics:
            m = metrics[name]
            ratio = f" ({m['fd'] / random_fd:.3f} x random)" if random_fd else ""
            rows.append((f"{name} FD{ratio}", fmt(m["fd"])))
            rows.append((f"{name} class accuracy", fmt(m["accuracy"])))
            if "fd_snapped" in m:
                rows.append(("diffusion snapped FD / accuracy", f"{fmt(m['fd_snapped'])} / {fmt(m['accuracy_snapped'])}"))
    for key in ("fd_real", "fd_reconstruction", "fd_random_tokens"):
        if key in base:
            rows.append((key, fmt(base[key])))
    if "total" in metrics.get("seconds", {}):
        rows.append(("wall time", f"{metrics['seconds']['total']:.0f} s"))
    return rows


def write_report(out: Path, metrics: dict, figures: dict[str, str]) -> None:
    """report.md: configuration, tables and the figures (relative links)."""
    cfg = metrics["config"]
    lines = [f"# ifsq-quant end to end — preset `{cfg['preset']}`", ""]
    if cfg["preset"] == "smoke":
        lines += [f"**{SMOKE_NOTE[0].upper() + SMOKE_NOTE[1:]}.**", ""]
    lines += [f"Digits 16x16 ({cfg['data']['train']} train / {cfg['data']['val']} validation), latents 4x4x{len(cfg['levels'])}, "
              f"levels {cfg['levels']}, index groups {cfg['index_groups']} (AR vocabularies {cfg['ar_vocab_sizes']}). "
              f"{cfg['world_size']} process(es), {cfg['threads']} thread(s) each, device {cfg['device']}, torch {cfg['torch']}.", ""]
    lines += [f"Command: `{cfg['command']}`", ""]
    if "tokenizers" in metrics:
        lines += ["## Tokenizers (validation)", "",
                  "| bottleneck | PSNR (dB) | SSIM | utilization | bits/dim | codebook usage | perplexity | FD of reconstructions |",
                  "|---|---|---|---|---|---|---|---|"]
        for kind, m in metrics["tokenizers"].items():
            lines.append(f"| {'FSQ (tanh)' if kind == 'fsq' else 'iFSQ (2·sigmoid(1.6z)−1)'} | {fmt(m['psnr'], 2)} | {fmt(m['ssim'])} | "
                         f"{fmt(m['utilization'])} | {fmt(float(np.mean(m['bits_per_dim'])), 2)} | {fmt(m['codebook_usage'], 4)} | "
                         f"{fmt(m['perplexity'], 0)} | {fmt(m.get('fd_reconstruction'))} |")
        lines += ["", "Utilization is the entropy of each latent dimension's level occupancy over log2(L), averaged over "
                  "dimensions; codebook usage is the fraction of the L^d codes used on the validation set.", ""]
        gauss = {k: m.get("gaussian_utilization") for k, m in metrics["tokenizers"].items()}
        if all(v is not None for v in gauss.values()):
            lines += ["Without an encoder, on N(0, 1) inputs, the bounds alone give utilization "
                      + ", ".join(f"{'FSQ' if k == 'fsq' else 'iFSQ'} {fmt(v)}" for k, v in gauss.items())
                      + " (for comparison: the trained encoders adapt their output distribution to the bound they are trained with).", ""]
    if "tokenizers_patches" in metrics:
        lines += ["## Tokenizers on natural 32x32 patches (held-out photographs)", "",
                  "| bottleneck | PSNR (dB) | SSIM | utilization |", "|---|---|---|---|"]
        for kind, m in metrics["tokenizers_patches"].items():
            lines.append(f"| {'FSQ' if kind == 'fsq' else 'iFSQ'} | {fmt(m['psnr'], 2)} | {fmt(m['ssim'])} | {fmt(m['utilization'])} |")
        lines.append("")
    base = metrics.get("baselines", {})
    if any(k in metrics for k in ("ar", "diffusion")) or base:
        random_fd = base.get("fd_random_tokens")
        lines += ["## Generators (class-conditional, on the iFSQ tokenizer)", "",
                  "Fréchet distance in the feature space of a small CNN trained on the real training digits "
                  f"(validation accuracy {fmt(metrics.get('classifier', {}).get('val_accuracy'))}), against the training images; "
                  "accuracy: fraction of samples that classifier assigns to the requested class.", "",
                  "| model | FD | FD / FD(random tokens) | class accuracy |", "|---|---|---|---|"]

        def row(name: str, fd: float | None, acc: float | None) -> str:
            ratio = fmt(fd / random_fd) if (fd is not None and random_fd) else "–"
            return f"| {name} | {fmt(fd)} | {ratio} | {fmt(acc)} |"

        if "fd_real" in base:
            lines.append(row("real validation images", base["fd_real"], base.get("accuracy_real")))
            lines.append(row("iFSQ reconstructions of validation", base["fd_reconstruction"], base.get("accuracy_reconstruction")))
            lines.append(row("decoded uniformly random indices", base["fd_random_tokens"], None))
        if "ar" in metrics:
            m = metrics["ar"]
            lines.append(row(f"AR transformer (guidance {m['cfg_scale']})", m["fd"], m["accuracy"]))
        if "diffusion" in metrics:
            m = metrics["diffusion"]
            lines.append(row(f"DiT, flow matching (guidance {m['cfg_scale']})", m["fd"], m["accuracy"]))
            lines.append(row("DiT samples snapped to the FSQ grid", m["fd_snapped"], m["accuracy_snapped"]))
        lines.append("")
        sweep = []
        for name, label in (("ar", "AR transformer"), ("diffusion", "DiT")):
            if name in metrics:
                m = metrics[name]
                points = {m["cfg_scale"]: m, **{float(c): v for c, v in m.get("cfg_sweep", {}).items()}}
                sweep += [row(f"{label}, guidance {c}", v["fd"], v["accuracy"]) for c, v in sorted(points.items())]
        if len(sweep) > 2:
            lines += ["### Classifier-free guidance", "", "Same models and seeds, only the guidance scale changes.", "",
                      "| model | FD | FD / FD(random tokens) | class accuracy |", "|---|---|---|---|", *sweep, ""]
        losses = [f"{label}: train {fmt(metrics[name].get('train_loss'))}, validation {fmt(metrics[name]['val_loss'])}"
                  for name, label in (("ar", "AR cross-entropy per index (nats)"), ("diffusion", "DiT flow-matching MSE")) if name in metrics]
        if losses:
            lines += ["Final losses — " + "; ".join(losses) + ". A validation loss far above the training loss means the "
                      "generator has largely memorized the training digits (1,497 images).", ""]
    if metrics.get("seconds"):
        lines += ["## Time (seconds)", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in metrics["seconds"].items()]
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for title, name in figures.items():
            lines += [f"### {title}", "", f"![{title}]({name})", ""]
    (out / "report.md").write_text("\n".join(lines))

