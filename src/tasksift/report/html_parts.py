"""Small pieces of a self-contained HTML page: escaped and clipped text, tables, and
matplotlib figures inlined as base64 PNG (Agg backend, no scripts, no network)."""
from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Sequence

import numpy as np


def use_agg() -> None:
    """Select matplotlib's file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)


def png_data_uri(fig: Any, dpi: int = 80) -> str:
    """The figure as a ``data:image/png;base64,...`` URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def img(uri: str, alt: str) -> str:
    return f"<img src='{uri}' alt='{html.escape(alt, quote=True)}'>"


def clip(text: Any, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters (an ellipsis and the full length appended when
    cut), whitespace runs shown as one space, then HTML-escaped."""
    s = " ".join(str(text if text is not None else "").split())
    if len(s) > max_chars:
        s = s[:max_chars].rstrip() + f" … [{len(s):,} chars]"
    return html.escape(s, quote=True)


def fmt(v: Any, nd: int = 3) -> str:
    """A table cell: numbers rounded, None/NaN as a dash, anything else escaped."""
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return "–"
        return f"{v:.{nd}f}" if abs(v) < 1e4 else f"{v:.4g}"
    return html.escape(str(v), quote=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, raw_cols: Sequence[int] = (),
          css: str = "") -> str:
    """An HTML table; every cell goes through :func:`fmt` except the columns ``raw_cols``,
    which must already be escaped HTML."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for r in rows:
        cells = "".join(f"<td>{c if j in raw_cols else fmt(c)}</td>" for j, c in enumerate(r))
        body.append(f"<tr>{cells}</tr>")
    cls = f" class='{css}'" if css else ""
    return f"<table{cls}><tr>{head}</tr>{''.join(body)}</table>"
