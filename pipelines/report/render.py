"""The report as markdown (PNGs referenced beside it) and as one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence

from pipelines.report.document import Claim, Image, Section, Table, Text


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *map(line, rows)])


def _claim_lines(c: Claim) -> list[str]:
    return [f"- **{c.verdict}** — {c.line}", *([f"  - pilot: {c.pilot}"] if c.pilot else [])]


def render_markdown(
    title: str, claims: list[Claim], sections: list[Section], protocol: Sequence[str] = ()
) -> str:
    """`protocol` (the rules verdicts follow, markdown paragraphs) is printed verbatim on top."""
    out = [f"# {title}", ""]
    if protocol:
        out += ["## Protocol", ""]
        for rule in protocol:
            out += [rule.rstrip(), ""]
    out += ["## Claims", ""]
    out += [line for c in claims for line in _claim_lines(c)]
    for sec in sections:
        out += ["", f"## {sec.title}", ""]
        for block in sec.blocks:
            match block:
                case Text(line):
                    out += [line, ""]
                case Table(headers, rows):
                    out += [_md_table(headers, rows), ""]
                case Image(path, caption):
                    out += [f"![{caption}]({path.name})", ""]
    return "\n".join(out).rstrip() + "\n"


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def _html_block(block: Text | Table | Image) -> str:
    match block:
        case Text(line):
            return f"<p>{_inline(line)}</p>"
        case Table(headers, rows):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                for row in rows
            )
            return f"<table><tr>{head}</tr>{body}</table>"
        case Image(path, caption):
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            return (
                f"<figure><img alt='{html.escape(caption)}' "
                f"src='data:image/png;base64,{data}'><figcaption>"
                f"{html.escape(caption)}</figcaption></figure>"
            )
    raise TypeError(f"not a report block: {block!r}")


def _paragraphs(rule: str) -> list[str]:
    """A markdown rule as HTML paragraphs (**bold** and *italic* kept)."""
    return [
        "<p>" + re.sub(r"(?<!\*)\*([^*]+?)\*(?!\*)", r"<em>\1</em>", _inline(p.strip())) + "</p>"
        for p in rule.split("\n\n") if p.strip()
    ]  # fmt: skip


def render_html(
    title: str, claims: list[Claim], sections: list[Section], protocol: Sequence[str] = ()
) -> str:
    """One self-contained page: the PNGs are embedded as base64."""
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;"
        "max-width:1100px;margin:auto}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *(["<h2>Protocol</h2>"] if protocol else []),
        *[p for rule in protocol for p in _paragraphs(rule)],
        "<h2>Claims</h2><ul>",
        *[
            f"<li><strong>{html.escape(c.verdict)}</strong> — {html.escape(c.line)}"
            + (f"<br><em>pilot: {html.escape(c.pilot)}</em>" if c.pilot else "")
            + "</li>"
            for c in claims
        ],
        "</ul>",
    ]
    for sec in sections:
        out.append(f"<h2>{html.escape(sec.title)}</h2>")
        out += [_html_block(block) for block in sec.blocks]
    out.append("</body></html>")
    return "\n".join(out) + "\n"
