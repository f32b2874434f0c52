"""Shared helpers for the examples: command-line options, the data set, a progress bar, batching, the
loss-curve plot and the JSON metrics file.

Optional dependencies (``pip install 'fastnorm[examples]'``) with fallbacks:
- scikit-learn: the 8x8 handwritten digits (1797 images, 10 classes, shipped inside the package, no
  download). Without it, a digits-like data set generated in code (noisy, shifted 8x8 glyphs).
- tqdm: the progress bar. Without it, a one-line text bar on stderr.
- matplotlib: the loss-curve plots. Without it, the plot is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator

import numpy as np


# ------------------------------------------------------------------------------------------------ options
def digits_parser(
    doc: str, quick: str, plot: str, *, epochs: bool = True, lr: float | None = None, threads: str | None = None
) -> argparse.ArgumentParser:
    """The options of the digits examples: --quick (help ``quick``), --epochs, --batch-size and --lr (when
    ``lr`` is a default), --seed, --threads (when ``threads`` is its help), --synthetic, --plot (default file
    ``plot``, none in --quick: see :func:`plot_path`) and --json."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=quick)
    if epochs:
        ap.add_argument("--epochs", type=int, default=None)
    if lr is not None:
        ap.add_argument("--batch-size", type=int, default=64)
        ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--seed", type=int, default=0)
    if threads:
        ap.add_argument("--threads", type=int, default=None, help=threads)
    ap.add_argument("--synthetic", action="store_true", help="use the generated data set")
    ap.add_argument("--plot", default=None, help=f"figure path (default {plot}; none in --quick)")
    ap.add_argument("--json", default=None, help="write the final metrics to this JSON file")
    ap.set_defaults(default_plot=plot)
    return ap


def setup(argv: list[str] | None, ap: argparse.ArgumentParser, epochs: tuple[int, int], *thread_setters) -> tuple:
    """Parse ``argv`` with ``ap``; the epoch count (--epochs, else ``epochs`` = (with --quick, without));
    each of ``thread_setters`` called with --threads when given; the data (``load_data``). Returns
    ``(args, epochs, (x_train, y_train, x_test, y_test, data_name))``."""
    args = ap.parse_args(argv)
    n_epochs = args.epochs or (epochs[0] if args.quick else epochs[1])
    for set_threads in thread_setters if getattr(args, "threads", None) else ():
        set_threads(args.threads)
    return args, n_epochs, load_data(args.seed, synthetic=args.synthetic)


def plot_path(args: argparse.Namespace) -> str | None:
    """--plot, else the default file outside --quick (no figure in --quick unless asked for)."""
    return args.plot if (args.plot or args.quick) else args.default_plot


def write_json(path: str | None, metrics: dict, indent: int | None = None) -> None:
    """Write ``metrics`` to ``path`` (nothing when ``path`` is None)."""
    if path:
        with open(path, "w") as f:
            json.dump(metrics, f, indent=indent)


def finish(args: argparse.Namespace, metrics: dict, panels: list, title: str, start: int = 1) -> dict:
    """The end of a training example: the loss curves (``plot_curves``' panels) saved where ``plot_path``
    says, ``metrics`` written to --json; returns ``metrics``."""
    plot = plot_path(args)
    if plot:
        plot_curves(panels, plot, title=title, start=start)
    write_json(args.json, metrics)
    return metrics


# ------------------------------------------------------------------------------------------------- data
def _synthetic_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Digits-like data: 10 random 8x8 glyphs, each sample one glyph shifted by up to 1 pixel, with
    random stroke intensity and pixel noise; values in [0, 16] like scikit-learn's digits."""
    glyphs = (rng.random((10, 8, 8)) < 0.35).astype(np.float64)
    y = rng.integers(0, 10, n)
    x = np.empty((n, 8, 8))
    for i, c in enumerate(y):
        img = np.roll(glyphs[c], (rng.integers(-1, 2), rng.integers(-1, 2)), axis=(0, 1))
        x[i] = img * rng.uniform(8, 16) + rng.normal(0, 3.0, (8, 8))
    return np.clip(x, 0, 16).reshape(n, 64), y


def load_data(seed: int = 0, test_fraction: float = 0.2, synthetic: bool = False):
    """(x_train, y_train, x_test, y_test, name): 64 features scaled to [0, 1] float32, int64 labels,
    a stratified-enough random split. scikit-learn's digits when installed (and not ``synthetic``)."""
    rng = np.random.default_rng(seed)
    name = "synthetic-digits"
    if not synthetic:
        try:
            from sklearn.datasets import load_digits

            d = load_digits()
            x, y, name = d.data, d.target, "sklearn-digits"
        except ImportError:
            synthetic = True
    if synthetic:
        x, y = _synthetic_digits(1797, rng)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    perm = rng.permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test], name


def batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Index arrays of a shuffled epoch, the last batch possibly smaller."""
    perm = rng.permutation(n)
    for i in range(0, n, batch_size):
        yield perm[i : i + batch_size]


# ------------------------------------------------------------------------------------------ progress bar
class _TextBar:
    def __init__(self, iterable: Iterable, total: int, desc: str):
        self.iterable, self.total, self.desc = iterable, total, desc
        self.postfix = ""
        self.start = time.perf_counter()

    def __iter__(self):
        for i, item in enumerate(self.iterable, 1):
            yield item
            self._draw(i)
        sys.stderr.write("\n")

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s

    def _draw(self, i: int) -> None:
        width = 30
        done = int(width * i / max(self.total, 1))
        elapsed = time.perf_counter() - self.start
        bar = "#" * done + "." * (width - done)
        sys.stderr.write(f"\r{self.desc} [{bar}] {i}/{self.total} {elapsed:.1f}s {self.postfix}")
        sys.stderr.flush()


def progress(iterable: Iterable, total: int, desc: str):
    """tqdm when installed, else a plain text bar; both take ``set_postfix_str``."""
    try:
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, file=sys.stderr)
    except ImportError:
        return _TextBar(iterable, total, desc)


# ------------------------------------------------------------------------------------------------- plots
def plot_curves(
    panels: list[tuple[str, str, dict[str, list[float]]]], path: str, *, title: str = "", start: int = 1
) -> bool:
    """Save one figure with a panel per (title, x label, {label: values}) side by side, x counting from
    ``start``; False (with a message) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'fastnorm[examples]')")
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (panel_title, xlabel, curves) in zip(axes[0], panels, strict=True):
        for label, values in curves.items():
            ax.plot(np.arange(start, start + len(values)), values, label=label)
        ax.set_title(panel_title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")
    return True
