"""Benchmarks: the roofline report (``python -m fastnorm.bench``) and the cases the bench/ suite runs.

Every op is timed for fastnorm (allocating outputs, and with ``out=`` buffers), the NumPy reference and
torch (where installed, same thread count), and set against the bandwidth of a streaming kernel with the
same read/write streams on the same threads, timed in rounds interleaved with the case's own samples
(``_rounds``: fractions of the bound and ratios between providers are medians of same-round ratios). The
inputs' placement in memory is an explicit axis (``_placement``: NumPy's, 64-byte or page-aligned copies).
"""

from ._core import DTYPES, Case, Unsupported, all_cases, stream_bound_gbps, time_call, torch_or_none
from ._report import format_table, plot_report, run_report

__all__ = [
    "DTYPES",
    "Case",
    "Unsupported",
    "all_cases",
    "format_table",
    "plot_report",
    "run_report",
    "stream_bound_gbps",
    "time_call",
    "torch_or_none",
]
