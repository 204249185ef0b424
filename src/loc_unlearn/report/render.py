"""Render a report (title, headline lines, sections of text / tables / plots) to Markdown and to one
self-contained HTML file (inline CSS, PNGs as base64 data URIs: it can be mailed or archived alone).

Text blocks use two bits of Markdown (**bold**, `code`); the HTML renderer converts just those.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass

from .common import Table


@dataclass
class Plot:
    name: str  # file name under plots/
    caption: str
    data: bytes  # PNG


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.meta{color:#666;font-size:.9em}
.headline{background:#f5f7fb;border-left:4px solid #3b6fd8;padding:.6em 1.2em;margin:1em 0}
.headline li{margin:.25em 0}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
.note{color:#555;font-size:.88em;margin:.2em 0}
figure{margin:1em 0}figure img{max-width:100%}figcaption{color:#555;font-size:.88em}
pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.8em}
"""


def inline_html(text: str) -> str:
    s = html.escape(text)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|")


def table_md(t: Table) -> str:
    lines = ["| " + " | ".join(map(_md_cell, t.headers)) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(t.headers) - 1)) + "|"]
    lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in t.rows]
    return "\n\n".join(["\n".join(lines)] + [f"_{n}_" for n in t.notes])


def table_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in r) + "</tr>" for r in t.rows)
    notes = "".join(f'<p class="note">{inline_html(n)}</p>' for n in t.notes)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"


def to_markdown(title: str, meta: str, headline: list[str], sections: list[tuple[str, list]]) -> str:
    out = [f"# {title}", "", meta, "", "## Headline", ""] + [f"- {h}" for h in headline] + [""]
    for name, blocks in sections:
        out += [f"## {name}", ""]
        for b in blocks:
            if isinstance(b, Table):
                out += [table_md(b), ""]
            elif isinstance(b, Plot):
                out += [f"![{b.caption}](plots/{b.name})", "", f"_{b.caption}_", ""]
            else:
                out += [b, ""]
    return "\n".join(out).rstrip() + "\n"


def to_html(title: str, meta: str, headline: list[str], sections: list[tuple[str, list]], config_json: str = "") -> str:
    parts = [f"<h1>{html.escape(title)}</h1>", f'<p class="meta">{inline_html(meta)}</p>',
             '<div class="headline"><ul>' + "".join(f"<li>{inline_html(h)}</li>" for h in headline) + "</ul></div>"]
    for name, blocks in sections:
        parts.append(f"<h2>{html.escape(name)}</h2>")
        for b in blocks:
            if isinstance(b, Table):
                parts.append(table_html(b))
            elif isinstance(b, Plot):
                data = base64.b64encode(b.data).decode("ascii")
                parts.append(f'<figure><img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
                             f"<figcaption>{inline_html(b.caption)}</figcaption></figure>")
            else:
                parts.append(f"<p>{inline_html(b)}</p>")
    if config_json:
        parts.append(f"<details><summary>Resolved config</summary><pre>{html.escape(config_json)}</pre></details>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n")
