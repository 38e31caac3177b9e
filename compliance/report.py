"""Render a compliance report (HTML or PDF) for a compliance officer, not an engineer.

A paragraph in plain words comes first (compliance.report_words), then the summary (is every
log intact, which silos, how many training rounds, how many bytes left the hospitals, ε spent
against each silo's cap, what each kind of message is); then one section per silo.
HTML comes from a jinja2 template with autoescaping on (log fields are untrusted text);
the PDF is WeasyPrint's rendering of that same HTML, so both always say the same thing.
"""

from __future__ import annotations

import base64
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import jinja2

from compliance.errors import ReportError
from compliance.ledger import LedgerRow
from compliance.report_data import ReportData, collect
from compliance.report_words import MESSAGE_KINDS, human_bytes, plain_value, summary_paragraph

log = logging.getLogger(__name__)

_TEMPLATES = Path(__file__).parent / "templates"
_PANGO_HINT = ("WeasyPrint needs Pango to write PDF reports; on Debian/Ubuntu run "
               "`apt-get install -y libpango-1.0-0 libpangoft2-1.0-0`, or build the HTML report instead")


def build_report(*, logs: Sequence[Path], out: Path, fmt: Literal["html", "pdf"],
                 study: str | None = None, silo: str | None = None,
                 ledger: Path | Sequence[Path] | None = None, keys: Mapping[str, str] | None = None) -> Path:
    """Write the report for ``logs`` (silo and coordinator audit logs) to ``out``; return its path.

    ``out`` may be a file or an existing directory (then ``audit-report.<fmt>`` inside it).
    ``keys`` maps node names to their registered public keys (hex).
    ``study`` and ``silo`` narrow the report; ``ledger`` (one or more privacy ledgers, e.g. one per silo) adds the privacy budget sections.
    """
    if fmt not in ("html", "pdf"):
        raise ReportError(f"report format {fmt!r} is not supported; use 'html' or 'pdf'")
    if not logs:
        raise ReportError("a report needs at least one audit log")
    data = collect(logs=logs, study=study, silo=silo, ledger=ledger, keys=keys)
    html = render_html(data)
    out = Path(out)
    if out.is_dir():
        out = out / f"audit-report.{fmt}"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if fmt == "html":
            tmp.write_text(html, encoding="utf-8")
        else:
            _write_pdf(html, tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s compliance report %s (%d logs, %d silos)", fmt, out, len(logs), len(data.silos))
    return out


def render_html(data: ReportData) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["bytes"] = human_bytes
    env.filters["num"] = plain_value
    env.filters["short"] = lambda h, n=16: f"{h[:n]}…" if isinstance(h, str) and len(h) > n else h
    plots = {s.name: epsilon_plot(s.ledger_rows) for s in data.silos if s.ledger_rows}
    return env.get_template("report.html.j2").render(r=data, plots=plots, summary=summary_paragraph(data),
                                                     kinds=MESSAGE_KINDS)


def epsilon_plot(rows: Sequence[LedgerRow]) -> str:
    """A PNG data URI of cumulative ε per round, one line per (dataset, study)."""
    from matplotlib.figure import Figure  # imported here: nodes that only log never pay for it
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.5, 2.8), dpi=110)  # no pyplot: no global state, thread-safe
    ax = fig.add_subplot()
    series: dict[tuple[str, str], list[LedgerRow]] = {}
    for row in rows:
        series.setdefault((row.dataset, row.study), []).append(row)
    for (dataset, study), points in sorted(series.items()):
        points.sort(key=lambda r: r.round)
        ax.plot([r.round for r in points], [r.epsilon for r in points], marker="o",
                label=f"{dataset} / {study}".replace("$", r"\$"))  # '$' would start mathtext
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative ε")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _write_pdf(html: str, out: Path) -> None:
    try:
        import weasyprint
    except (ImportError, OSError) as exc:  # OSError: the Pango shared libraries are missing
        raise ReportError(f"{_PANGO_HINT} ({exc})") from exc
    weasyprint.HTML(string=html, base_url=str(_TEMPLATES)).write_pdf(out)
