"""An analysis study's results as the researcher keeps them: JSON, CSV and a short HTML report.

`write_analysis(summary, out)` takes `summary.json` of a finished analysis study (its "analysis"
section: coordinator/analysis.py `PooledStatistics`) and writes `analysis.json` (the pooled figures
as received), `analysis.csv` (one row per figure: pooled value, the silos that held theirs back,
then one column per hospital that lets its own figures be shown) and `analysis.html` and `analysis.pdf` (the cohort
table, per-feature histograms per hospital, a missingness heat map and label prevalence per
hospital; plots drawn with matplotlib and embedded). Pooled quantiles are read from the pooled
histogram with the silos' own grouped-data rule (pipelines.analytics). A suppressed figure is
shown as "suppressed at <silos>", never as a number.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipelines.analytics import quantiles_from_histogram  # noqa: E402

SUPPRESSED = "suppressed"
log = logging.getLogger(__name__)


def cohort_rows(pooled: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, pooled value, note) rows of the cohort table, as `fedcare demo --analysis` prints them."""
    if pooled.get("unopened"):  # masked sums whose masks did not cancel: there is no figure to show
        return [("masked sums", "not opened", pooled["unopened"])]
    def shown(count: dict[str, Any]) -> tuple[str, str]:
        if set(count["suppressed_at"]) >= set(pooled["silos"]):  # no hospital released it: no number at all
            return SUPPRESSED, "held back at every hospital"
        note = f"{SUPPRESSED} at {', '.join(count['suppressed_at'])}" if count["suppressed_at"] else ""
        return str(count["value"]), note

    rows = [("patients", *shown(pooled["patients"])), ("label positive", *shown(pooled["label_positive"]))]
    rows += [(f"with {m}", *shown(c)) for m, c in pooled["modalities"].items()]
    for col in pooled["columns"]:
        value, note = shown(col["present"])
        mean = "" if col["mean"] is None else f"; mean {col['mean']:.4g}, sd {col['sd'] if col['sd'] is None else round(col['sd'], 4)}"
        rows.append((f"{col['name']} present", value + mean, note))
    return rows


def pooled_quantiles(col: dict[str, Any], levels: list[float]) -> list[float | None] | None:
    """Quantiles of the pooled histogram; None while any of its cells was held back somewhere."""
    hist = col.get("histogram")
    if hist is None or any(c["suppressed_at"] for c in hist):
        return None
    return quantiles_from_histogram([c["value"] for c in hist], col["edges"], levels)


def _csv(pooled: dict[str, Any], path: Path) -> None:
    silos = sorted(pooled["per_silo"])
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["figure", "pooled", "suppressed_at", *silos])

        def row(figure: str, count: dict[str, Any], own: list[Any]) -> None:
            w.writerow([figure, count["value"], ";".join(count["suppressed_at"]),
                        *(SUPPRESSED if v is None else v for v in own)])

        own = pooled["per_silo"]
        row("patients", pooled["patients"], [own[s]["patients"] for s in silos])
        row("label_positive", pooled["label_positive"], [own[s]["label_positive"] for s in silos])
        for m, c in pooled["modalities"].items():
            row(f"modality:{m}", c, [own[s]["modalities"].get(m) for s in silos])
        for j, col in enumerate(pooled["columns"]):
            name = col["name"]
            row(f"{name}:present", col["present"], [own[s]["columns"][j]["present"] for s in silos])
            row(f"{name}:missing", col["missing"], [own[s]["columns"][j]["missing"] for s in silos])
            w.writerow([f"{name}:mean", col["mean"], "", *(own[s]["columns"][j]["mean"] for s in silos)])
            w.writerow([f"{name}:sd", col["sd"], "", *("" for _ in silos)])
            for q, v in zip(pooled["quantile_levels"], pooled_quantiles(col, pooled["quantile_levels"]) or []):
                w.writerow([f"{name}:q{q:g}", v, "", *("" for _ in silos)])
            for i, cell in enumerate(col["histogram"] or []):
                lo = "-inf" if i == 0 else f"{col['edges'][i - 1]:g}"
                hi = "inf" if i == len(col["edges"]) else f"{col['edges'][i]:g}"
                row(f"{name}:[{lo},{hi})", cell, [(own[s]["columns"][j]["histogram"] or [None] * (i + 1))[i] for s in silos])


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _plots(pooled: dict[str, Any]) -> list[str]:
    own, silos = pooled["per_silo"], sorted(pooled["per_silo"])
    out = []
    for j, col in enumerate(pooled["columns"]):
        if col["histogram"] is None or not silos:
            continue
        fig, ax = plt.subplots(figsize=(6, 2.6))
        n = len(col["histogram"])
        width = 0.8 / len(silos)
        for k, s in enumerate(silos):
            cells = own[s]["columns"][j]["histogram"] or [None] * n
            ax.bar([i + k * width for i in range(n)], [c or 0 for c in cells], width=width, label=s)
        labels = ["<" + f"{col['edges'][0]:g}", *(f"{e:g}" for e in col["edges"][:-1]), "≥" + f"{col['edges'][-1]:g}"]
        ax.set_xticks(range(n), labels, rotation=60, fontsize=7)
        ax.set_title(f"{col['name']}: patients per bin and hospital (suppressed cells drawn as 0)", fontsize=9)
        ax.legend(fontsize=7)
        out.append(_png(fig))
    if silos:
        names = [c["name"] for c in pooled["columns"]]
        grid = [[(c["missing"] / (c["present"] + c["missing"])) if c["missing"] is not None and c["present"] is not None
                 and (c["present"] + c["missing"]) else float("nan") for c in own[s]["columns"]] for s in silos]
        fig, ax = plt.subplots(figsize=(6, 0.6 + 0.4 * len(silos)))
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
        ax.set_yticks(range(len(silos)), silos, fontsize=7)
        ax.set_title("share missing per feature and hospital (blank: suppressed)", fontsize=9)
        fig.colorbar(im, ax=ax)
        out.append(_png(fig))
        fig, ax = plt.subplots(figsize=(6, 2.2))
        prevalence = [(own[s]["label_positive"] or 0) / own[s]["patients"]
                      if own[s]["patients"] and own[s]["label_positive"] is not None else 0 for s in silos]
        ax.bar(silos, prevalence)
        ax.set_title("label prevalence per hospital (0 where suppressed)", fontsize=9)
        out.append(_png(fig))
    return out


def _html(summary: dict[str, Any], pooled: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
                   for a, b, c in cohort_rows(pooled))
    held = "".join(f"<li>{html.escape(s)}: {html.escape('; '.join(v) or 'nothing')}</li>" for s, v in pooled["suppressed"].items())
    dp = "".join(f"<li>{html.escape(s)}: {html.escape(d['mechanism'])} noise, ε {d['epsilon']:.3g} at δ {d['delta']:g} "
                 f"over {d['queries']} statistics</li>" for s, d in pooled["dp"].items()) or "<li>none</li>"
    withheld = ", ".join(pooled["withheld_per_silo"]) or "none"
    masked = ("<p>Summed under pairwise masks (secure_sum = masking): the coordinator saw only these totals, "
              "never a hospital's own figures.</p>") if pooled.get("secure_sum") == "masking" else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Cohort overview</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}td{padding:2px 8px}</style></head><body>"
        f"<h1>Cohort overview: {html.escape(str(summary.get('name', '')))}</h1>"
        f"<p>Study {html.escape(str(summary.get('study', '')))}; hospitals: {html.escape(', '.join(pooled['silos']))}. "
        "Counts and histograms are exact sums of what each hospital released; means and standard deviations pool "
        "each hospital's moments. A figure marked suppressed left out a hospital's value below its minimum cell "
        f"count. Hospitals not shown individually: {html.escape(withheld)}.</p>"
        f"{masked}<table><tr><th>figure</th><th>pooled</th><th>note</th></tr>{rows}</table>"
        f"<h2>Held back at each hospital</h2><ul>{held}</ul><h2>Differential privacy</h2><ul>{dp}</ul>"
        f"<h2>Plots</h2>{''.join(_plots(pooled))}</body></html>")


def write_analysis(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write analysis.json, analysis.csv and analysis.html for a finished analysis study's summary."""
    pooled = summary.get("analysis")
    if pooled is None:
        raise ValueError(f"study {summary.get('study')} has no pooled statistics (kind {summary.get('kind')!r}, state "
                         f"{summary.get('state')!r}); results of an analysis study are ready once it is done")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "analysis.json", "csv": out / "analysis.csv", "html": out / "analysis.html"}
    paths["json"].write_text(json.dumps(pooled, indent=2, sort_keys=True))
    _csv(pooled, paths["csv"])
    page = _html(summary, pooled)
    paths["html"].write_text(page, encoding="utf-8")
    try:  # the PDF needs Pango (scripts/install.sh installs it); without it the HTML is the report
        import weasyprint

        weasyprint.HTML(string=page).write_pdf(out / "analysis.pdf")
        paths["pdf"] = out / "analysis.pdf"
    except (ImportError, OSError) as e:
        log.warning("analysis.pdf not written (%s); analysis.html holds the same report", e)
    return paths
