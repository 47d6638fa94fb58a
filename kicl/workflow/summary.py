"""The report's summary page: each figure and table, the rule that made it, its files, and job timings.

Entries come from the workflow itself (rules/common.smk: REPORT_ITEMS and each rule's declared outputs);
timings are read from the Snakemake `benchmark:` files (wall seconds `s`, peak RSS `max_rss` in MB).
Each item shows thumbnails of its PNG figures (embedded, so the page works inside the Snakemake report) next to
its headline numbers, read from the CSV it wrote: the verdict lines, the selected head of Table 2, Fig 3's best
head with its position-keeping null threshold and family-wise p-value (and the label-permutation null's p).
The verdict tables are reproduced in full at the top.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd

from kicl.fileio import write_text_atomic
from kicl.store.heads import HeadId


def read_benchmarks(files) -> pd.DataFrame:
    """Concatenated benchmark TSVs that exist (columns file, s, max_rss); empty frame if none."""
    frames = []
    for path in files:
        path = Path(path)
        if path.is_file():
            bench = pd.read_csv(path, sep="\t")
            bench["file"] = str(path)
            frames.append(bench)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["file", "s", "max_rss"])


def rule_timings(benchmark_dir) -> pd.DataFrame:
    """Per rule (first folder under benchmark_dir): jobs, total and longest wall time, peak RSS."""
    root = Path(benchmark_dir)
    files = sorted(root.rglob("*.tsv")) if root.is_dir() else []
    bench = read_benchmarks(files)
    if bench.empty:
        return pd.DataFrame(columns=["rule", "jobs", "total_s", "max_s", "max_rss_mb"])
    bench["rule"] = [Path(f).relative_to(root).parts[0].removesuffix(".tsv") for f in bench["file"]]
    bench["max_rss"] = pd.to_numeric(bench["max_rss"], errors="coerce")
    out = bench.groupby("rule").agg(
        jobs=("s", "size"), total_s=("s", "sum"), max_s=("s", "max"), max_rss_mb=("max_rss", "max")
    )
    return out.reset_index().sort_values("total_s", ascending=False)


def _timing(entry) -> str:
    bench = read_benchmarks(entry.get("benchmarks", []))
    if bench.empty:
        return "—"
    return f"{bench['s'].sum():.1f} s over {len(bench)} job(s)"


def _task_of(path: Path) -> str:
    """model/task/condition of results/figures/<model>/<task>/<condition>/file; the condition of
    results/tables/<model>/<condition>/file."""
    parts = path.parts
    return "/".join(parts[-4:-1]) if "figures" in parts else parts[-2]


def headline(path) -> list[str]:
    """Short headline numbers of a CSV the summary knows (verdict, Table 2, Fig 3, conditions); [] for others."""
    path = Path(path)
    if path.suffix != ".csv" or not path.is_file():
        return []
    frame = pd.read_csv(path)
    if path.name == "verdict.csv":
        return [
            f"{r.model} / {r.task} / {r.condition}: {r.verdict}; head {r.heads}, Δ vs best competitor "
            f"{r.difference:+.3f} [{r.difference_low:+.3f}, {r.difference_high:+.3f}], MDD {r.mdd:.3f}, n {r.n}"
            for r in frame.itertuples(index=False)
        ]
    if path.name == "conditions.csv" and "accuracy_diff" in frame:
        return [
            f"{path.parts[-2]} / {r.condition}: accuracy {r.accuracy:.3f}"
            + (
                ""
                if r.is_reference
                else f", Δ {r.accuracy_diff:+.3f} [{r.accuracy_diff_low:+.3f}, {r.accuracy_diff_high:+.3f}], "
                f"ŷ changed on {r.yhat_change:.3f}"
            )
            for r in frame.itertuples(index=False)
        ]
    if path.name == "table2.csv" and "row" in frame:
        rows = frame[frame["row"] == "recon_agreement"]
        return [
            f"{r.task} / {_task_of(path)}: {r.head} ỹ vs ŷ {r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
            for r in rows.itertuples()
        ]
    if path.name == "fig3_reconstruction.csv" and "agree_pred_position_p" in frame:
        out = []
        for pooling, sub in frame.groupby("pooling", sort=False):
            best = sub.loc[sub["agree_pred"].idxmax()]
            out.append(
                f"{_task_of(path)} ({pooling}): best {HeadId(best['layer'], best['head'])} {best['agree_pred']:.3f}, "
                f"position-keeping null: threshold {best['agree_pred_position_threshold']:.3f}, "
                f"family-wise p {best['agree_pred_position_p']:.3f}, "
                f"{int(frame['agree_pred_above_null'].sum())} heads above (all poolings); "
                f"label-permutation null p {best['agree_pred_label_p_value']:.3f}"
            )
            break  # the first pooling (the table's, by default max) is enough for a headline
        return out
    return []


def thumbnail(path, width: int = 220) -> str | None:
    """A PNG shrunk to `width` pixels as a data URI (None when the file is missing or unreadable)."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            image.thumbnail((width, width * 4))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG", optimize=True)
    except (OSError, ValueError):
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def summary_rows(entries) -> list[dict]:
    return [
        {
            "what": e["what"],
            "rule": e["rule"],
            "files": list(e["files"]),
            "time": _timing(e),
            "numbers": [line for f in e["files"] for line in headline(f)],
        }
        for e in entries
    ]


def write_summary(entries, out_html, out_md, benchmark_dir="benchmarks/out") -> None:
    """Write the summary as HTML (for the report) and Markdown."""
    rows = summary_rows(entries)
    timings = rule_timings(benchmark_dir)
    verdicts = [Path(f) for r in rows for f in r["files"] if Path(f).name == "verdict.md" and Path(f).is_file()]
    write_text_atomic(out_md, summary_markdown(rows, timings, verdicts))
    write_text_atomic(out_html, summary_html(rows, timings, verdicts))


def summary_markdown(rows: list[dict], timings: pd.DataFrame, verdicts: list[Path]) -> str:
    """The verdicts, one line per report item and the wall time per rule, as Markdown."""
    md = ["# Figures and tables of this run", ""]
    for path in verdicts:
        md += [path.read_text().strip(), ""]
    md += ["| figure / table | rule | numbers | files | wall time |", "|---|---|---|---|---|"]
    for r in rows:
        numbers = "<br>".join(r["numbers"]) or "—"
        files = "<br>".join(f"`{f}`" for f in r["files"])
        md.append(f"| {r['what']} | `{r['rule']}` | {numbers} | {files} | {r['time']} |")
    md += [
        "",
        "## Wall time per rule (benchmark files)",
        "",
        "| rule | jobs | total s | longest s | peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for t in timings.itertuples(index=False):
        md.append(f"| `{t.rule}` | {t.jobs} | {t.total_s:.1f} | {t.max_s:.1f} | {t.max_rss_mb:.0f} |")
    return "\n".join(md) + "\n"


def summary_html(rows: list[dict], timings: pd.DataFrame, verdicts: list[Path]) -> str:
    """The same as an HTML page, with the verdict tables and the figures' thumbnails."""
    esc = html.escape
    body = [
        "<h2>Figures and tables of this run</h2>",
        "<p>Each item of the report, the Snakemake rule that made it and the files it wrote "
        "(rebuild one with <code>snakemake &lt;file&gt;</code> or <code>snakemake --forcerun &lt;rule&gt;</code>).</p>",
    ]
    for path in verdicts:
        table = path.with_suffix(".csv")
        if table.is_file():
            cols = [
                "task",
                "decision",
                "verdict",
                "heads",
                "competitors",
                "difference",
                "difference_low",
                "difference_high",
                "mdd",
                "n_to_decide",
                "invariance",
                "invariance_low",
                "invariance_high",
                "n",
            ]
            frame = pd.read_csv(table)
            html_table = frame[[c for c in cols if c in frame]].to_html(index=False, float_format="%.3f", border=1)
            body.append(f"<h3>Verdict ({esc(path.parent.name)})</h3>{html_table}")
    body += [
        "<table border='1' cellpadding='4' style='border-collapse:collapse'>",
        "<tr><th>figure / table</th><th>rule</th><th>figures</th><th>numbers</th><th>files</th><th>wall time</th></tr>",
    ]
    for r in rows:
        files = "<br>".join(f"<code>{esc(f)}</code>" for f in r["files"])
        thumbs = []
        for f in r["files"]:
            uri = thumbnail(f) if f.endswith(".png") else None
            if uri:
                thumbs.append(f"<img src='{uri}' title='{esc(f)}' alt='{esc(f)}' style='margin:2px'>")
        numbers = "<br>".join(esc(n) for n in r["numbers"]) or "—"
        body.append(
            f"<tr><td>{esc(r['what'])}</td><td><code>{esc(r['rule'])}</code></td><td>{''.join(thumbs) or '—'}</td>"
            f"<td>{numbers}</td><td>{files}</td><td>{esc(r['time'])}</td></tr>"
        )
    body += [
        "</table>",
        "<h3>Wall time per rule</h3>",
        "<table border='1' cellpadding='4' style='border-collapse:collapse'>",
        "<tr><th>rule</th><th>jobs</th><th>total s</th><th>longest s</th><th>peak RSS MB</th></tr>",
    ]
    for t in timings.itertuples(index=False):
        body.append(
            f"<tr><td><code>{esc(t.rule)}</code></td><td>{t.jobs}</td><td>{t.total_s:.1f}</td><td>{t.max_s:.1f}</td><td>{t.max_rss_mb:.0f}</td></tr>"
        )
    body.append("</table>")
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>kicl summary</title></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    return page
