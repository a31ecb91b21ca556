"""Training progress report: loss curves as an HTML page (inline SVG) plus a PNG.

Input is the ``history`` a training run logs (one dict per log line with ``step`` and the loss
parts, e.g. ``loss``, ``local``, ``global``, ``lr``, ``steps_per_s``; see
:class:`uae_ray.train.trainer.TrainState`). No plotting library is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw

from uae_ray.report.html import esc, png_data_uri, write_html

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
W, H, PAD = 640, 260, 44


def _scale(values: Sequence[float], lo: float, hi: float, a: float, b: float) -> list[float]:
    span = (hi - lo) or 1.0
    return [a + (v - lo) / span * (b - a) for v in values]


def _series(history: list[dict[str, Any]], keys: Sequence[str]) -> tuple[list[float], dict[str, list[float]]]:
    rows = [h for h in history if "step" in h]
    steps = [float(h["step"]) for h in rows]
    return steps, {k: [float(h[k]) for h in rows if k in h] for k in keys if any(k in h for h in rows)}


def _axes(steps: list[float], series: dict[str, list[float]]) -> tuple[float, float, float, float]:
    values = [v for vs in series.values() for v in vs]
    return min(steps), max(steps), min(values), max(values)


def svg_chart(history: list[dict[str, Any]], keys: Sequence[str], title: str) -> str:
    """An SVG line chart of ``keys`` against ``step``."""
    steps, series = _series(history, keys)
    if len(steps) < 1 or not series:
        return f"<p>{esc(title)}: no data</p>"
    x0, x1, y0, y1 = _axes(steps, series)
    xs = _scale(steps, x0, x1, PAD, W - 10)
    parts = [f"<svg width='{W}' height='{H}' xmlns='http://www.w3.org/2000/svg' style='font:11px sans-serif'>",
             f"<rect x='{PAD}' y='10' width='{W - PAD - 10}' height='{H - PAD - 10}' fill='none' stroke='#999'/>",
             f"<text x='{PAD}' y='{H - 18}'>step {x0:.0f}</text>",
             f"<text x='{W - 10}' y='{H - 18}' text-anchor='end'>{x1:.0f}</text>",
             f"<text x='{PAD - 4}' y='16' text-anchor='end'>{y1:.3g}</text>",
             f"<text x='{PAD - 4}' y='{H - PAD}' text-anchor='end'>{y0:.3g}</text>"]
    for i, (name, vs) in enumerate(series.items()):
        ys = _scale(vs, y0, y1, H - PAD, 10)
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
        colour = _COLOURS[i % len(_COLOURS)]
        parts.append(f"<polyline points='{pts}' fill='none' stroke='{colour}' stroke-width='1.5'/>")
        parts.append(f"<text x='{PAD + 8 + 90 * i}' y='{H - 4}' fill='{colour}'>{esc(name)} {vs[-1]:.4g}</text>")
    parts.append(f"<text x='{W / 2}' y='{H - 18}' text-anchor='middle'>{esc(title)}</text></svg>")
    return "".join(parts)


def png_chart(history: list[dict[str, Any]], keys: Sequence[str]) -> Image.Image:
    """The same chart as a PIL image (for a PNG file next to the report)."""
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    steps, series = _series(history, keys)
    draw.rectangle([PAD, 10, W - 10, H - PAD], outline="#999999")
    if not steps or not series:
        return img
    x0, x1, y0, y1 = _axes(steps, series)
    xs = _scale(steps, x0, x1, PAD, W - 10)
    for i, (name, vs) in enumerate(series.items()):
        ys = _scale(vs, y0, y1, H - PAD, 10)
        colour = _COLOURS[i % len(_COLOURS)]
        if len(xs) > 1:
            draw.line(list(zip(xs, ys)), fill=colour, width=2)
        draw.text((PAD + 8 + 110 * i, H - 16), f"{name} {vs[-1]:.4g}", fill=colour)
    draw.text((4, 10), f"{y1:.3g}", fill="black")
    draw.text((4, H - PAD - 10), f"{y0:.3g}", fill="black")
    draw.text((PAD, H - PAD + 4), f"step {x0:.0f}", fill="black")
    draw.text((W - 60, H - PAD + 4), f"{x1:.0f}", fill="black")
    return img


def training_report(path: str | Path, history: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> Path:
    """Writes ``path`` (HTML: loss, learning-rate and speed curves, run metadata) and
    ``<path without .html>.png`` (the loss curves).

    Args:
        path: Output HTML path.
        history: Logged records (``step`` plus numbers).
        meta: Run metadata shown as a table (command, data, config, ...).
    """
    path = Path(path)
    loss_keys = [k for k in ("loss", "local", "global", "semantic", "cross_modal") if any(k in h for h in history)]
    png = png_chart(history, loss_keys)
    path.parent.mkdir(parents=True, exist_ok=True)
    png.save(path.with_suffix(".png"))
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in (meta or {}).items())
    last = history[-1] if history else {}
    body = (
        f"<p>{len(history)} log records; last: "
        + ", ".join(f"{esc(k)} {v:.4g}" for k, v in last.items() if isinstance(v, (int, float)))
        + "</p>"
        + svg_chart(history, loss_keys, "loss")
        + svg_chart(history, ["lr"], "learning rate")
        + svg_chart(history, ["steps_per_s"], "steps/s")
        + f"<h2>PNG</h2><img src='{png_data_uri(png)}' alt='loss curves'>"
        + (f"<h2>Run</h2><table>{rows}</table>" if rows else "")
    )
    return write_html(path, "uae-ray training", body)


__all__ = ["training_report", "svg_chart", "png_chart"]
