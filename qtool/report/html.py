"""A self-contained HTML page of the study report: the Markdown tables and the figures inlined."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from qtool.fileio import write_text

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; margin: 1em 0; border: 1px solid #eee; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def markdown_to_html(markdown: str) -> str:
    """CommonMark with GitHub's pipe tables, rendered by markdown-it-py; raw HTML is escaped."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)


def write_html_report(markdown_path: Path, figures: dict[str, str], path: Path, title: str) -> Path:
    body = markdown_to_html(Path(markdown_path).read_text(encoding="utf-8"))
    images = []
    for name, figure in figures.items():
        data = base64.b64encode(Path(figure).read_bytes()).decode("ascii")
        images.append(
            f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(name.replace('_', ' '))}</figcaption></figure>"
        )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}<h2>Figures</h2>{''.join(images)}</body></html>"
    )
    return write_text(path, page)
