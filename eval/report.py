"""One self-contained HTML report (tables + embedded PNG plots) from the benchmarks and evaluations."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path


@dataclass
class Section:
    """One part of the report: a table of rows (dicts keyed by column), plots and notes."""

    title: str
    columns: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return html.escape(str(value))


def _image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}"></figure>'


def render_html(title: str, sections: list[Section]) -> str:
    """The whole page as one string: no external files, images inlined as data: URLs."""
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px}"
        "td{text-align:right}td:first-child,th{text-align:left}th{background:#f3f3f3}"
        "img{max-width:100%}figure{margin:1em 0}.note{color:#555}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">Written {datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}.</p>',
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        for note in section.notes:
            parts.append(f'<p class="note">{html.escape(note)}</p>')
        if section.rows:
            parts.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in section.columns)
                         + "</tr></thead><tbody>")
            for row in section.rows:
                parts.append("<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in section.columns) + "</tr>")
            parts.append("</tbody></table>")
        parts.extend(_image(p) for p in section.images if Path(p).is_file())
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: Path, title: str, sections: list[Section]) -> Path:
    """Write the page atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_html(title, sections), encoding="utf-8")
    tmp.replace(path)
    return path
