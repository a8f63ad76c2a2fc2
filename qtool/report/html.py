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


def _inline(text: str) -> str:
    escaped = html.escape(text)
    parts = escaped.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def markdown_to_html(markdown: str) -> str:
    """Enough Markdown for the report qtool writes: headings, lists, pipe tables, paragraphs."""
    out, table = [], []

    def flush_table() -> None:
        if not table:
            return
        header, *body = [row for row in table if not set(row.replace("|", "").strip()) <= {"-", " "}]
        cells = lambda row: [c.strip() for c in row.strip().strip("|").split("|")]  # noqa: E731
        out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells(header)) + "</tr>")
        out.extend("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells(row)) + "</tr>" for row in body)
        out.append("</table>")
        table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush_table()
    return "\n".join(out)


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
