"""Self-contained HTML QC reports (images inlined as base64 PNG)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from uae_ray.atomic import write_text_atomic

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:2em}
td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:middle;font-size:13px}
th{background:#f3f3f3}
img{display:block}
.imgs{display:flex;gap:2px}
.low{color:#b00}
h2{margin-top:1.5em}
"""


def png_data_uri(image: Image.Image) -> str:
    """Encodes a PIL image as a ``data:image/png;base64`` URI."""
    return png_bytes_data_uri(png_bytes(image))


def png_bytes(image: Image.Image) -> bytes:
    """A PIL image as PNG file bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def png_bytes_data_uri(data: bytes) -> str:
    """PNG file bytes as a ``data:image/png;base64`` URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image_strip(images: list[Image.Image], titles: list[str] | None = None) -> str:
    """HTML for a row of images."""
    titles = titles or [""] * len(images)
    cells = "".join(
        f'<img src="{png_data_uri(im)}" title="{html.escape(t)}" alt="{html.escape(t)}">'
        for im, t in zip(images, titles)
    )
    return f'<div class="imgs">{cells}</div>'


def esc(value: object) -> str:
    """HTML-escapes any value."""
    return html.escape(str(value))


def html_page(title: str, body: str) -> str:
    """A complete HTML page (the reports' style) around ``body``."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>"
    )


def write_html(path: str | Path, title: str, body: str) -> Path:
    """Writes a complete HTML page atomically and returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, html_page(title, body))
