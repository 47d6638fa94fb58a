"""The report's summary page: each figure and table, the rule that made it, its files, and job timings.

Entries come from the workflow itself (rules/common.smk: REPORT_ITEMS and each rule's declared outputs);
timings are read from the Snakemake `benchmark:` files (wall seconds `s`, peak RSS `max_rss` in MB).
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from kicl.fileio import write_text_atomic


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


def summary_rows(entries) -> list[dict]:
    return [{"what": e["what"], "rule": e["rule"], "files": list(e["files"]), "time": _timing(e)} for e in entries]


def write_summary(entries, out_html, out_md, benchmark_dir="benchmarks/out") -> None:
    """Write the summary as HTML (for the report) and Markdown."""
    rows = summary_rows(entries)
    timings = rule_timings(benchmark_dir)
    md = ["# Figures and tables of this run", "", "| figure / table | rule | files | wall time |", "|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['what']} | `{r['rule']}` | {'<br>'.join(f'`{f}`' for f in r['files'])} | {r['time']} |")
    md += [
        "",
        "## Wall time per rule (benchmark files)",
        "",
        "| rule | jobs | total s | longest s | peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for t in timings.itertuples(index=False):
        md.append(f"| `{t.rule}` | {t.jobs} | {t.total_s:.1f} | {t.max_s:.1f} | {t.max_rss_mb:.0f} |")
    write_text_atomic(out_md, "\n".join(md) + "\n")

    esc = html.escape
    body = [
        "<h2>Figures and tables of this run</h2>",
        "<p>Each item of the report, the Snakemake rule that made it and the files it wrote "
        "(rebuild one with <code>snakemake &lt;file&gt;</code> or <code>snakemake --forcerun &lt;rule&gt;</code>).</p>",
        "<table border='1' cellpadding='4' style='border-collapse:collapse'>",
        "<tr><th>figure / table</th><th>rule</th><th>files</th><th>wall time</th></tr>",
    ]
    for r in rows:
        files = "<br>".join(f"<code>{esc(f)}</code>" for f in r["files"])
        body.append(
            f"<tr><td>{esc(r['what'])}</td><td><code>{esc(r['rule'])}</code></td><td>{files}</td><td>{esc(r['time'])}</td></tr>"
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
    write_text_atomic(out_html, page)
