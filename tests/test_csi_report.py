"""CSI report: the bar chart's axis (units, log scale when values span decades) and caption (error bars)."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from atomsift.csi.report import bar_chart, bar_figure, use_log_axis


def rows(values: dict[tuple[str, str], tuple[float, float | None, float | None]], **extra: Any) -> list[dict]:
    """Rows like run_csi's for (downstream, upstream) -> (csi, ci_low, ci_high)."""
    out = []
    for (down, up), (csi, lo, hi) in values.items():
        out.append(
            {
                "downstream": down,
                "upstream": up,
                "csi": csi,
                "ci_low": lo,
                "ci_high": hi,
                "extractor": "sevenn-0",
                "aggregation": "flat",
                "csi_units": "squared activations (dimensionless)",
                "confidence": 0.9,
                "bootstrap": 37,
                "same_dataset": up == down,
                **extra,
            }
        )
    return out


SPREAD = {
    ("ethanol", "acac"): (0.5, 0.3, 0.9),
    ("ethanol", "oxides"): (290.0, 250.0, 330.0),
    ("oxides", "oxides"): (0.0, 0.0, 0.0),
    ("oxides", "acac"): (120.0, 100.0, 140.0),
}


@pytest.mark.parametrize(
    ("values", "log"),
    [([0.5, 290.0], True), ([1.0, 100.0], False), ([1.0, 100.1], True), ([0.0, 5.0], False), ([3.0, None], False)],
)
def test_log_axis_only_beyond_two_decades(values, log):
    assert use_log_axis(values) is log


def test_chart_names_units_error_bars_and_goes_log_when_values_span_decades():
    fig = bar_figure(rows(SPREAD))
    try:
        (ax,) = fig.axes
        assert ax.get_yscale() == "log"
        assert ax.get_ylim()[0] < 0.3  # the 0.5 bar and its interval stand above the axis floor
        assert "CSI [squared activations (dimensionless)]" in ax.get_ylabel()
        assert "sevenn-0" in ax.get_title()
        caption = " ".join(t.get_text() for t in fig.texts)
        assert "error bars: 90% bootstrap percentile interval (37 resamples of whole structures" in caption
        assert "compare only within one extractor" in caption
        labels = [t.get_text() for t in ax.texts]
        assert "0\n(same set)" in labels and "290" in labels
    finally:
        plt.close(fig)


def test_chart_stays_linear_for_close_values_and_says_when_there_are_no_error_bars(tmp_path):
    close = {k: (v + 10.0, None, None) for k, (v, _, _) in SPREAD.items() if v < 200}
    fig = bar_figure(rows(close))
    try:
        assert fig.axes[0].get_yscale() == "linear"
        assert "no error bars" in " ".join(t.get_text() for t in fig.texts)
    finally:
        plt.close(fig)
    bar_chart(rows(SPREAD), tmp_path / "bars.png")  # a zero CSI with a [0, 0] interval on a log axis
    assert (tmp_path / "bars.png").stat().st_size > 10_000
