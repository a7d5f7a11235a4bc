"""Render an AuditReport as JSON (a stable contract for CI pipelines), plain text or Markdown."""
from __future__ import annotations

import json
import math

from cxrcore.audit.audit import AuditReport, SplitSummary
from cxrcore.data.labels import LABELS


def _num(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def summary_to_dict(summary: SplitSummary) -> dict:
    classes = {}
    for label, row in summary.classes.iterrows():
        classes[label] = {"positives": int(row["positives"]), "pos_freq": float(row["pos_freq"]),
                          "neg_freq": float(row["neg_freq"]), "w_pos": float(row["w_pos"]),
                          "w_neg": float(row["w_neg"]), "pos_contribution": float(row["pos_contribution"]),
                          "neg_contribution": float(row["neg_contribution"])}
    return {"source": summary.source, "rows": summary.rows, "images": summary.rows,
            "patients": summary.patients, "classes": classes, "no_finding": summary.no_finding,
            "no_finding_share": summary.no_finding_share,
            "labels_per_image": {str(k): v for k, v in summary.labels_per_image.items()},
            "cooccurrence": {"labels": list(LABELS), "counts": summary.cooccurrence.tolist()},
            "metadata": {column: {k: _num(v) for k, v in values.items()}
                         for column, values in summary.metadata.items()}}


def verdict(report: AuditReport) -> str:
    """One sentence a person can act on."""
    if report.leak_free:
        return "Clean: no patient or image is shared between splits."
    parts = []
    if report.leaked_patients:
        parts.append(f"{report.leaked_patients} patient(s) with {report.leaked_images} image(s) appear in "
                     "more than one split")
    shared = sum(leak.images for leak in report.leakage)
    if shared:
        parts.append(f"{shared} image name(s) are shared")
    if report.duplicate_leaks:
        parts.append(f"{report.duplicate_leaks} duplicate image pair(s) cross splits")
    return "Leaking: " + "; ".join(parts) + "."


def to_dict(report: AuditReport) -> dict:
    """JSON-ready dict; keys documented in docs/cli.md."""
    data = {
        "leak_free": report.leak_free,
        "verdict": verdict(report),
        "leaked_patients": report.leaked_patients,
        "leaked_images": report.leaked_images,
        "splits": {s.name: summary_to_dict(s) for s in report.summaries},
        "leakage": [leak.to_dict() for leak in report.leakage],
        "prevalence_shift": [
            {k: (_num(v) if isinstance(v, float) else v) for k, v in row.items()}
            for row in report.shift.to_dict(orient="records")],
        "metadata_shift": [
            {k: (_num(v) if isinstance(v, float) else v) for k, v in row.items()}
            for row in report.metadata_shift.to_dict(orient="records")],
        "warnings": [str(w) for w in report.warnings],
    }
    if report.images is not None:
        data["images"] = report.images.to_dict()
    return data


def to_json(report: AuditReport) -> str:
    return json.dumps(to_dict(report), indent=2, allow_nan=False)


def _balance_rows(summary: SplitSummary) -> list[list[str]]:
    rows = []
    for label, row in summary.classes.iterrows():
        rows.append([label, f"{int(row['positives'])}", f"{row['pos_freq']:.3f}", f"{row['neg_freq']:.3f}",
                     f"{row['w_pos']:.3f}", f"{row['w_neg']:.3f}"])
    return rows


_BALANCE_HEADER = ["class", "positives", "pos_freq", "neg_freq", "w_pos", "w_neg"]


def _table_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; a "|" inside a cell (header "max |dev|" too) is escaped, or it would split the cell."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|", *[line(r) for r in rows]])


def format_p(value: float | None) -> str:
    """A p-value as every page and report writes it: four decimals, "<0.0001" below that, "-" when undefined."""
    if value is None or math.isnan(value):
        return "-"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def _shift_rows(report: AuditReport, alpha: float = 0.001) -> list[list[str]]:
    flagged = report.shift[report.shift["p_value"] < alpha]
    return [[r.a, r.b, r.label, f"{r.prevalence_a:.3f}", f"{r.prevalence_b:.3f}", f"{r.difference:+.3f}",
             format_p(r.p_value)] for r in flagged.itertuples()]


def render(report: AuditReport, fmt: str = "text") -> str:
    """Text or Markdown report: verdict, per-pair leakage, balance per split, shift, image checks."""
    if fmt == "json":
        return to_json(report)
    table = markdown_table if fmt == "markdown" else _table_text
    heading = (lambda t: f"## {t}") if fmt == "markdown" else (lambda t: f"{t}\n{'=' * len(t)}")
    out = [("# Split audit" if fmt == "markdown" else "SPLIT AUDIT"), "", f"**{verdict(report)}**"
           if fmt == "markdown" else verdict(report), ""]
    out += [heading("Splits"), table(["split", "images", "patients", "No Finding", "source"],
                                      [[s.name, str(s.rows), str(s.patients), f"{s.no_finding_share:.1%}",
                                        s.source] for s in report.summaries]), ""]
    if report.leakage:
        out += [heading("Leakage between splits"), table(
            ["a", "b", "shared patients", "shared images", "example patient ids"],
            [[leak.a, leak.b, str(leak.patients), str(leak.images),
              ", ".join(str(p) for p in leak.patient_ids[:8]) + (" ..." if leak.patients > 8 else "")]
             for leak in report.leakage]), ""]
    if report.images is not None:
        check = report.images
        missing = sum(len(v) for v in check.missing.values())
        unreadable = sum(len(v) for v in check.unreadable.values())
        cross = check.cross_split_duplicates()
        out += [heading("Image files"), f"{check.checked} checked under {check.root}: {missing} missing, "
                f"{unreadable} unreadable, {len(cross)} duplicate pair(s) across splits "
                "(the same radiograph saved twice: byte copies, and re-exports confirmed by aligning the images and "
                "comparing their fine detail).", ""]
        if cross:
            out += [table(["split a", "image a", "split b", "image b", "kind"],
                          [[d.split_a, d.image_a, d.split_b, d.image_b,
                            "exact" if d.exact else f"near (detail correlation {d.similarity:.2f})"] for d in cross[:50]]), ""]
    for summary in report.summaries:
        out += [heading(f"Class balance: {summary.name}"), table(_BALANCE_HEADER, _balance_rows(summary)), ""]
    shift_rows = _shift_rows(report)
    if len(report.summaries) > 1:
        out += [heading("Prevalence shift (p < 0.001)"),
                table(["a", "b", "class", "prev a", "prev b", "diff", "p"], shift_rows) if shift_rows
                else "No class prevalence differs at p < 0.001.", ""]
    if not report.metadata_shift.empty:
        out += [heading("Age, sex and view shift"), table(
            ["a", "b", "variable", "test", "a", "b", "p"],
            [[r["a"], r["b"], r["variable"], r["test"], f"{r['summary_a']:.3f}", f"{r['summary_b']:.3f}",
              f"{r['p_value']:.1e}"] for r in report.metadata_shift.to_dict(orient="records")]), ""]
    if report.warnings:
        out += [heading("Warnings"), *[f"- {w}" for w in report.warnings], ""]
    return "\n".join(out).rstrip() + "\n"
