"""The HTML report: Markdown rendered by markdown-it-py, figures inlined."""

from __future__ import annotations

from qtool.report.html import markdown_to_html, write_html_report


def test_lists_tables_code_and_escaping():
    html = markdown_to_html("# Title\n\n- one `code`\n- two <b>\n\n| a | b |\n| --- | ---: |\n| 1 | 2 |\n")
    assert html.count("<ul>") == 1 and html.count("<li>") == 2
    assert "<code>code</code>" in html and "&lt;b&gt;" in html
    assert "<th>a</th>" in html and '<td style="text-align:right">2</td>' in html


def test_page_inlines_every_figure(tmp_path):
    from qtool.plotting import pyplot, save_figure

    figure, axis = pyplot().subplots()
    axis.plot([0, 1], [1, 0])
    png = save_figure(figure, tmp_path / "a.png")
    markdown = tmp_path / "report.md"
    markdown.write_text("# Report\n\ntext\n")
    page = write_html_report(markdown, {"a_figure": str(png)}, tmp_path / "report.html", "t").read_text()
    assert page.count("data:image/png;base64,") == 1 and "<h1>Report</h1>" in page and "a figure" in page
