"""index.html: one self-contained page (figures as base64 PNG, inline CSS, no scripts, no links out).

Every string that comes from files (run ids, reasons, class names, spec values) goes through
``html.escape``; numbers are formatted here. Each section always appears, with a sentence saying
why it is empty when the sweep has no data for it, so a reader (and a test) finds every heading.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any, Iterable

from .model import Comparison, FigureRef, Group, ReportData, slug

# (id, heading): the page's sections in order; the table of contents links to each id.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("status", "Run status"),
    ("summary", "Summary"),
    ("setup", "What each variant changes"),
    ("accuracy", "Test accuracy"),
    ("curves", "Training curves"),
    ("confusion", "Confusion matrices"),
    ("per-class", "Per-class accuracy"),
    ("failures", "High-confidence failures"),
    ("comparison", "Baseline vs variant"),
    ("canonical", "Canonical failure cases and Grad-CAM"),
    ("neighbours", "Nearest training neighbours"),
    ("calibration", "Calibration"),
    ("robustness", "Corruption robustness"),
    ("faithfulness", "Grad-CAM faithfulness"),
    ("shortcut", "Background shortcut"),
    ("files", "Files"),
)

CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dee7; --bg: #ffffff; --soft: #f5f7fa; --warn: #fff4e0;
        --bad: #fde8e8; --ok: #e8f6ec; --accent: #1f5fbf; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: var(--bg);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 40px 0 10px; padding-top: 10px; border-top: 2px solid var(--line); }
h3 { font-size: 16px; margin: 24px 0 8px; }
h3.group { font-size: 17px; color: var(--accent); border-bottom: 1px solid var(--line); padding-bottom: 2px; }
h4 { font-size: 15px; margin: 16px 0 6px; }
p.meta { color: var(--muted); margin: 0 0 16px; }
nav.toc { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 16px; }
nav.toc ol { columns: 3; margin: 6px 0; padding-left: 22px; }
nav.toc a { color: var(--accent); text-decoration: none; }
.note { background: var(--warn); border-left: 4px solid #e0a030; padding: 8px 12px; margin: 8px 0; }
.empty { color: var(--muted); font-style: italic; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--soft); }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.reason { max-width: 560px; overflow-wrap: anywhere; font-family: ui-monospace, Menlo, Consolas, monospace;
            font-size: 12px; }
tr.st-failed td, tr.st-broken td { background: var(--bad); }
tr.st-missing td, tr.st-partial td { background: var(--warn); }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px; overflow-wrap: anywhere; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
ul.summary li { margin: 4px 0; }
details summary { cursor: pointer; color: var(--accent); }
.verdict { background: var(--soft); border-left: 4px solid var(--accent); padding: 6px 12px; }
"""


def esc(value: Any) -> str:
    """Any value as escaped HTML text (quotes too: values end up inside attributes)."""
    return html.escape(str(value), quote=True)


def pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def points(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.2f}"


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]], numeric: Iterable[int] = (),
          row_classes: Iterable[str] | None = None) -> str:
    """An HTML table; cells are escaped unless given as a ``Raw``."""
    numeric = set(numeric)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    classes = list(row_classes) if row_classes is not None else None
    for i, row in enumerate(rows):
        cells = []
        for j, v in enumerate(row):
            cls = ' class="num"' if j in numeric else (' class="reason"' if isinstance(v, Reason) else "")
            cells.append(f"<td{cls}>{v if isinstance(v, Raw) else esc(v)}</td>")
        tr = f'<tr class="{esc(classes[i])}">' if classes else "<tr>"
        body.append(tr + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class Raw(str):
    """Already-escaped HTML for a table cell."""


class Reason(str):
    """A long free-text reason (escaped, set in a wrapping monospace cell)."""


def para(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def empty(text: str) -> str:
    return para(text, "empty")


def figure(figs: dict[str, FigureRef], name: str) -> str:
    ref = figs.get(name)
    if ref is None:
        return ""
    return (f'<figure id="fig-{esc(ref.filename[:-4])}"><img src="{ref.data_uri}" alt="{esc(ref.caption)}">'
            f"<figcaption>{esc(ref.caption)} <code>figures/{esc(ref.filename)}</code></figcaption></figure>")


def _group_title(group: Group, report: ReportData) -> str:
    return f'<h3 class="group">Group {esc(group.label)}</h3>' if len(report.groups) > 1 and group.label else ""


def _h(report: ReportData) -> str:
    """Heading level under a section: h4 when groups take h3."""
    return "h4" if len(report.groups) > 1 else "h3"


def _figure_key(label: str) -> str:
    return slug(label)


def _g(report: ReportData, gi: int) -> str:
    return f"_g{gi}" if len(report.groups) > 1 else ""


# ------------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------------


def sec_status(report: ReportData, figs: dict[str, FigureRef]) -> str:
    counts = ", ".join(f"{v} {k}" for k, v in report.status_counts.items())
    finer = ", ".join(f"{v} {k}" for k, v in report.state_counts.items() if k not in report.status_counts)
    n = len(report.status_rows)
    out = [para(f"{n} expected runs: {counts}" + (f" (of which {finer})" if finer else "") + ".")]
    problems = [r for r in report.status_rows if r["status"] != "done"]
    if problems:
        out.append(para("These runs are not in the report's numbers. Status is done, failed or missing; state says "
                        "more: broken (finished, but results.h5 is damaged or does not match DONE.json: counted as "
                        "failed), partial (a checkpoint without DONE.json: still running or killed, resumed on "
                        "relaunch: counted as missing)."))
        out.append(table(("run", "variant", "seed", "group", "status", "state", "reason"),
                         ([r["run_id"], r["variant"], r["seed"], r["group"] or "-", r["status"], r["state"],
                           Reason(r["reason"] or "-")] for r in problems),
                         row_classes=[f"st-{r['state']}" for r in problems]))
    else:
        out.append(para("Every expected run finished and was read."))
    accs = {rid: (cell, i) for cell in report.cells for i, rid in enumerate(cell.run_ids)}
    rows, classes = [], []
    for r in report.status_rows:
        cell_i = accs.get(r["run_id"])
        acc = hc = "-"
        if cell_i is not None:
            cell, i = cell_i
            acc, hc = pct(cell.accuracies[i]), str(cell.high_conf[i])
        restarts = r.get("restarts")
        status = r["status"] if r["state"] == r["status"] else f"{r['status']} ({r['state']})"
        rows.append([r["run_id"], r["variant"], r["seed"], r["group"] or "-", status, acc, hc,
                     "-" if restarts is None else str(restarts)])
        classes.append(f"st-{r['state']}")
    full = table(("run", "variant", "seed", "group", "status", "test accuracy", "high-conf failures",
                  "Slurm restarts"), rows, numeric=(5, 6, 7), row_classes=classes)
    requeued = [r for r in report.status_rows if r.get("restarts")]
    if requeued:
        out.append(para(f"{len(requeued)} run(s) were requeued by Slurm (preemption or time limit) and resumed "
                        f"from their checkpoints: {sum(r['restarts'] for r in requeued)} restarts in all."))
    opened = " open" if n <= 24 else ""
    out.append(f"<details{opened}><summary>all {n} runs</summary>{full}</details>")
    return "".join(out)


def sec_summary(report: ReportData, figs: dict[str, FigureRef]) -> str:
    out = []
    if report.description:
        out.append(para(report.description))
    out.append('<ul class="summary">' + "".join(f"<li>{esc(line)}</li>" for line in report.summary_lines) + "</ul>")
    out.append(figure(figs, "overview") or empty("No finished runs: nothing to plot yet."))
    return "".join(out)


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)


def sec_setup(report: ReportData, figs: dict[str, FigureRef]) -> str:
    out = [para(f"Each variant is compared with the baseline '{report.baseline}' of its group. The spec keys "
                "below are all that differs (seed and grid values aside), so a reader can check that a "
                "modification is constrained to one thing.")]
    any_rows = False
    for group in report.groups:
        out.append(_group_title(group, report))
        for cell in group.cells[1:]:
            any_rows = True
            h = _h(report)
            out.append(f"<{h}>{esc(cell.label)} vs {esc(report.baseline)}</{h}>")
            if cell.diff:
                out.append(para(f"{len(cell.diff)} setting(s) differ."))
                out.append(table(("setting", "baseline", cell.variant),
                                 ([Raw(f"<code>{esc(k)}</code>"), _value(a), _value(b)] for k, a, b in cell.diff)))
            else:
                out.append(empty("No difference found in the resolved specs."))
    if not any_rows:
        out.append(empty("The sweep has only the baseline."))
    return "".join(out)


def _delta_text(comp: Comparison | None) -> str:
    if comp is None:
        return "n/a"
    lo, hi = comp.stats["ci95"]
    return f"{points(comp.stats['accuracy_delta_mean'])} [{points(lo)}, {points(hi)}]"


def sec_accuracy(report: ReportData, figs: dict[str, FigureRef]) -> str:
    comps = {(c.group, c.variant): c for c in report.comparisons}
    rows = []
    for cell in report.cells:
        ci = f"[{pct(cell.acc_ci95[0])}, {pct(cell.acc_ci95[1])}]" if cell.acc_ci95 else "n/a"
        delta = "(baseline)" if cell.is_baseline else _delta_text(comps.get((cell.group, cell.variant)))
        rows.append([cell.label, cell.n_runs, ", ".join(str(s) for s in cell.seeds) or "-",
                     pct(cell.acc_mean), pct(cell.acc_std), ci, delta,
                     ", ".join(pct(a) for a in cell.accuracies) or "-"])
    return (para("Accuracies are over the full test set; mean and std (ddof=1) over seeds, the 95% CI of the "
                 "mean from Student's t. The delta is paired by sorted seed order (points, 95% paired "
                 "bootstrap CI over seeds and test images).")
            + table(("variant", "n", "seeds", "mean", "std", "95% CI of mean", "delta vs baseline (points)",
                     "per run"), rows, numeric=(1, 3, 4, 5, 6)))


def sec_curves(report: ReportData, figs: dict[str, FigureRef]) -> str:
    parts = [figure(figs, "val_accuracy")]
    for cell in report.cells:
        parts.append(figure(figs, f"curves_{_figure_key(cell.label)}"))
    body = "".join(parts)
    return body or empty("No finished runs.")


def sec_confusion(report: ReportData, figs: dict[str, FigureRef]) -> str:
    body = "".join(figure(figs, f"confusion_{_figure_key(c.label)}") for c in report.cells)
    note = para("Rows are true classes, columns predicted classes; counts are summed over seeds." +
                (" With more than 20 classes the cells carry no numbers." if report.num_classes > 20 else ""))
    return note + body if body else empty("No finished runs.")


def _delta_table(report: ReportData, group: Group, comp: Comparison) -> str:
    """Every class's accuracy in the baseline and the variant and their difference, sorted as the
    waterfall (largest gain first): the figure can only label so many classes, the table has all."""
    base = group.cells[0]
    var = next((c for c in group.cells if c.variant == comp.variant), None)
    if base.per_class is None or var is None or var.per_class is None:
        return ""
    def known(x: float) -> float | None:  # a class absent from the test set has NaN accuracy
        return None if math.isnan(x) else float(x)

    rows = [[report.class_names[i], pct(known(base.per_class[i]), 1), pct(known(var.per_class[i]), 1),
             points(known(comp.per_class_delta[i]))]
            for i in (int(i) for i in comp.per_class_order)]
    opened = " open" if len(rows) <= 20 else ""
    return (f"<details{opened}><summary>{esc(comp.label)} − {esc(comp.baseline)}: all {len(rows)} classes, "
            "sorted by change</summary>"
            + table(("class", f"{base.variant} accuracy", f"{comp.variant} accuracy", "change (points)"), rows,
                    numeric=(1, 2, 3)) + "</details>")


def sec_per_class(report: ReportData, figs: dict[str, FigureRef]) -> str:
    out = []
    for gi, group in enumerate(report.groups):
        out.append(_group_title(group, report))
        out.append(figure(figs, f"per_class{_g(report, gi)}"))
        for comp in group.comparisons:
            out.append(figure(figs, f"waterfall_{_figure_key(comp.label)}"))
            out.append(_delta_table(report, group, comp))
    body = "".join(out)
    return body if "<figure" in body else empty("No finished runs.")


def sec_failures(report: ReportData, figs: dict[str, FigureRef]) -> str:
    out = [para(f"A high-confidence failure is a wrong prediction whose top softmax probability exceeds "
                f"{report.threshold:g}. failures.json lists every one of every run.")]
    rows = [[c.label, c.n_runs, ", ".join(str(h) for h in c.high_conf) or "-",
             num(sum(c.high_conf) / len(c.high_conf), 1) if c.high_conf else "n/a"] for c in report.cells]
    out.append(table(("variant", "n", f"failures > {report.threshold:g} per run", "mean"), rows, numeric=(1, 3)))
    out.append(figure(figs, "thresholds"))
    out.append(figure(figs, "confidence_hist"))
    for cell in report.cells:
        fig = figure(figs, f"top_failures_{_figure_key(cell.label)}")
        if fig:
            out.append(fig)
        elif cell.top_failures:
            out.append(f"<h3>{esc(cell.label)}: most confident failures (seed {esc(cell.top_failures_seed)})</h3>")
            out.append(table(("test index", "true", "predicted", "confidence"),
                             ([t["test_index"], t["true_name"], t["pred_name"], num(t["confidence"])]
                              for t in cell.top_failures), numeric=(0, 3)))
    return "".join(out)


def _pairs_table(comp: Comparison) -> str:
    s = comp.stats
    rows = []
    for p in s["pairs"]:
        mc = p["mcnemar"]
        rows.append([f"{p['base_seed']} / {p['var_seed']}", p["corrected"], p["worsened"], p["both_wrong"],
                     p["both_right"], f"{mc['p_value']:.3g} ({mc['method']})"])
    rows.append(["sum", s["corrected"], s["worsened"], s["both_wrong"], s["both_right"], ""])
    return table(("seeds (baseline / variant)", "corrected", "worsened", "both wrong", "both right", "McNemar p"),
                 rows, numeric=(1, 2, 3, 4, 5))


def sec_comparison(report: ReportData, figs: dict[str, FigureRef]) -> str:
    if not report.comparisons:
        return empty("No comparison: it needs at least one finished baseline run and one finished variant run "
                     "in the same group.")
    out = [para("On the full test set, per seed pair (paired by sorted seed order) and summed: corrected = "
                "variant right where the baseline is wrong, worsened = the reverse.")]
    for comp in report.comparisons:
        s = comp.stats
        lo, hi = s["ci95"]
        out.append(f"<h3>{esc(comp.label)} vs {esc(comp.baseline)}</h3>")  # labels name the group
        out.append(_pairs_table(comp))
        pf = s["persistent_failures"]
        out.append(table(("statistic", "value"), [
            ["accuracy delta (points)", f"{points(s['accuracy_delta_mean'])} [{points(lo)}, {points(hi)}]"],
            ["seed pairs", s["n_pairs"]],
            ["baseline seed noise floor (share of images two baseline seeds disagree on)",
             pct(s["baseline_noise_floor"])],
            ["variant vs baseline disagreement (mean over pairs)",
             pct(s["variant_disagreement"]) + {True: " (above the floor)", False: " (within the floor)",
                                                None: ""}[s["disagreement_exceeds_floor"]]],
            ["persistent baseline failures (wrong in every seed)", pf["persistent"]],
            ["... of which the variant gets right in every paired seed", pf["persistent_fixed_by_variant"]],
            ["seed-dependent baseline failures", pf["seed_dependent"]],
            ["persistent / seed-dependent variant failures",
             f'{s["variant_persistent_failures"]["persistent"]} / {s["variant_persistent_failures"]["seed_dependent"]}'],
        ], numeric=(1,)))
        out.append(f'<p class="verdict">Verdict: {esc(s["verdict"])}.</p>')
    return "".join(out)


def gradcam_note(report: ReportData, cells: list | None = None) -> str:
    """Which layer the Grad-CAM maps come from and their size, once when every cell agrees."""
    cells = [c for c in (cells if cells is not None else report.cells) if c.gradcam]
    if not cells:
        return ""
    texts = {c.gradcam_text for c in cells}
    where = (next(iter(texts)) if len(texts) == 1
             else "; ".join(f"{c.label}: {c.gradcam_text}" for c in cells))
    return para(f"Grad-CAM layer and map size (before upsampling to 32×32): {where}. Choose the layer with "
                "[report].gradcam_layer in the grid file.", "meta")


def sec_canonical(report: ReportData, figs: dict[str, FigureRef]) -> str:
    out = [para("Canonical cases are chosen automatically: test images that are high-confidence failures in "
                "more than half of the baseline seeds (2 of 2, 2 of 3, 3 of 4), ranked by that share and then by "
                "confidence. Grad-CAM is "
                "shown for the predicted and the true class, for the first seed of the baseline and of each "
                "variant; 'right in k/S' counts the seeds that classify the image correctly."),
           gradcam_note(report)]
    for gi, group in enumerate(report.groups):
        out.append(_group_title(group, report))
        if group.case_note:
            out.append(para(group.case_note, "note"))
        if not group.cases:
            out.append(empty("No canonical case."))
            continue
        heads = ["test index", "true", "baseline predicts", "baseline fails in"]
        heads += [f"{c.variant}: right in" for c in group.comparisons]
        rows = []
        for j, case in enumerate(group.cases):
            b = case.baseline
            row = [case.test_index, case.true_name, f"{b.pred_name} ({b.confidence:.2f})" if b else "n/a",
                   f"{100 * case.fail_fraction:.0f}% of seeds"]
            for comp in group.comparisons:
                v = comp.cases[j] if j < len(comp.cases) else None
                row.append("no run" if v is None else
                           f"{v.right_seeds}/{v.n_seeds}" + (" (fixed)" if v.right_seeds == v.n_seeds else ""))
            rows.append(row)
        out.append(table(heads, rows, numeric=(0,)))
        if group.comparisons:
            for comp in group.comparisons:
                out.append(figure(figs, f"canonical_{_figure_key(comp.label)}"))
        else:
            out.append(figure(figs, f"canonical{_g(report, gi)}"))
    return "".join(out)


def sec_neighbours(report: ReportData, figs: dict[str, FigureRef]) -> str:
    out = [para("For each canonical failure, the training images closest to it in the baseline's penultimate "
                "feature space (cosine similarity, first baseline seed, among the stored training subset).")]
    found = False
    for gi, group in enumerate(report.groups):
        cases = [c for c in group.cases if c.neighbours]
        if not cases:
            continue
        found = True
        out.append(_group_title(group, report))
        fig = figure(figs, f"neighbours{_g(report, gi)}")
        if fig:
            out.append(fig)
        else:
            out.append(table(("test index", "true", "neighbours (train index, class, similarity)"),
                             ([c.test_index, c.true_name,
                               "; ".join(f"#{n.train_index} {n.label_name} {n.similarity:.2f}" for n in c.neighbours)]
                              for c in cases), numeric=(0,)))
    if not found:
        out.append(empty("Not available: needs canonical cases and train_subset embeddings "
                         "([stress].train_embedding_samples > 0)."))
    return "".join(out)


def sec_calibration(report: ReportData, figs: dict[str, FigureRef]) -> str:
    rows = []
    for c in report.cells:
        k = c.calibration
        rows.append([c.label, c.n_runs, num(k.get("ece")), num(k.get("nll")), num(k.get("brier")),
                     num(k.get("temperature"), 2), num(k.get("ece_after")), num(k.get("nll_after"))])
    if not any(c.n_runs for c in report.cells):
        return empty("No finished runs.")
    return (para("Means over seeds. The temperature is fitted on each run's validation logits (never on the "
                 "test set); 'after' is the test set scaled by it.")
            + table(("variant", "n", "ECE", "NLL", "Brier", "temperature", "ECE after", "NLL after"), rows,
                    numeric=range(1, 8))
            + figure(figs, "reliability"))


def sec_robustness(report: ReportData, figs: dict[str, FigureRef]) -> str:
    cells = [c for c in report.cells if c.stress]
    if not cells:
        return empty("No corrupted test sets were stored ([stress].corruptions is empty).")
    rows = []
    for c in cells:
        k = c.corruption_calibration
        rows.append([c.label, pct(c.acc_mean), pct(c.mca),
                     pct(c.mca / c.acc_mean) if c.mca is not None and c.acc_mean else "n/a",
                     num(c.calibration.get("ece")), num(c.corruption_calibration.get("ece")), num(k.get("ece_after")),
                     num(c.calibration.get("nll")), num(k.get("nll")), num(c.calibration.get("brier")),
                     num(k.get("brier"))])
    out = [para("Mean corruption accuracy (mCA) and calibration under corruption are means over every corruption "
                "and severity (and over seeds). 'after T' applies the temperature fitted on each run's clean "
                "validation logits, unchanged, to the corrupted test sets: does the clean fix survive the shift?"),
           table(("variant", "clean accuracy", "mCA", "mCA / clean", "ECE clean", "ECE corrupted",
                  "ECE corrupted after T", "NLL clean", "NLL corrupted", "Brier clean", "Brier corrupted"), rows,
                 numeric=range(1, 11)),
           figure(figs, "robustness"), figure(figs, "reliability_corrupted")]
    sev_rows = []
    for c in cells:
        for name, v in sorted(c.stress.items()):
            for i, sev in enumerate(v["severities"]):
                sev_rows.append([c.label, name, sev, pct(v["accuracy"][i]), num(v["ece"][i]), num(v["ece_after"][i]),
                                 num(v["nll"][i]), num(v["brier"][i])])
    if sev_rows:
        out.append(para("Calibration under corruption per corruption and severity (ECE on 15 bins), mean over seeds."))
        opened = " open" if len(sev_rows) <= 24 else ""
        out.append(f"<details{opened}><summary>{len(sev_rows)} corrupted test sets</summary>"
                   + table(("variant", "corruption", "severity", "accuracy", "ECE", "ECE after T", "NLL", "Brier"),
                           sev_rows, numeric=range(2, 8)) + "</details>")
    corruptions = sorted({k for c in cells for k in c.breaking})
    if corruptions:
        out.append(para("Classes that break first: the largest per-class accuracy drop at the lowest severity "
                        "(pooled over seeds)."))
        heads = ["corruption"] + [c.label for c in cells]
        rows = [[name] + ["; ".join(f"{cls} ({points(-d)})" for cls, d in c.breaking.get(name, [])) or "-"
                          for c in cells] for name in corruptions]
        out.append(table(heads, rows))
    return "".join(out)


def sec_faithfulness(report: ReportData, figs: dict[str, FigureRef]) -> str:
    cells = [c for c in report.cells if c.faithfulness and c.faithfulness["auc"]]
    if not cells:
        return empty("No deletion/insertion curves were stored ([stress].faithfulness_samples is 0).")
    rows = []
    for c in cells:
        a = c.faithfulness["auc"]
        verdict = []
        if "deletion_gradcam" in a and "deletion_random" in a:
            verdict.append("deletion " + ("beats" if a["deletion_gradcam"] < a["deletion_random"] else "does not beat")
                           + " random")
        if "insertion_gradcam" in a and "insertion_random" in a:
            verdict.append("insertion " + ("beats" if a["insertion_gradcam"] > a["insertion_random"] else "does not beat")
                           + " random")
        rows.append([c.label, c.faithfulness["n"], num(a.get("deletion_gradcam")), num(a.get("deletion_random")),
                     num(a.get("insertion_gradcam")), num(a.get("insertion_random")), "; ".join(verdict)])
    return (para("Pixels are removed (deletion) or revealed (insertion) in the order a map ranks them; a faithful "
                 "map makes the predicted class's probability fall fast (low deletion AUC) and rise fast (high "
                 "insertion AUC), compared with random maps.")
            + gradcam_note(report, cells)
            + table(("variant", "images", "deletion AUC Grad-CAM", "deletion AUC random", "insertion AUC Grad-CAM",
                     "insertion AUC random", "Grad-CAM vs random"), rows, numeric=range(1, 6))
            + figure(figs, "faithfulness"))


def sec_shortcut(report: ReportData, figs: dict[str, FigureRef]) -> str:
    cells = [c for c in report.cells if c.shortcut]
    if not cells:
        return empty("Not available: needs the shapes dataset (object masks and background classes) on this "
                     "machine.")
    out = [para(g.shortcut_sentence, "verdict") for g in report.groups if g.shortcut_sentence]
    rows = [[c.label, num(c.shortcut.get("energy_right")), num(c.shortcut.get("energy_wrong")),
             pct(c.shortcut.get("acc_aligned"), 1), pct(c.shortcut.get("acc_conflicting"), 1),
             pct(c.shortcut.get("follows_background"), 1), num(c.shortcut.get("n_conflicting"), 0)] for c in cells]
    out.append(para("Energy: fraction of the predicted class's Grad-CAM mass inside the object mask. A conflicting "
                    "image has a background hue that names another class than its label."))
    out.append(gradcam_note(report, cells))
    out.append(table(("variant", "energy in object (right)", "energy in object (wrong)", "accuracy, aligned",
                      "accuracy, conflicting", "follows background", "conflicting images"), rows,
                     numeric=range(1, 7)))
    out.append(figure(figs, "shortcut"))
    return "".join(out)


def sec_files(report: ReportData, figs: dict[str, FigureRef]) -> str:
    items = [("summary.json", "headline numbers per run, per variant and per comparison"),
             ("failures.json", "every high-confidence failure of every run"),
             ("runs.csv", "one row per expected run"),
             ("figures/", f"the {len(figs)} figures of this page as PNG files")]
    return "<ul>" + "".join(f"<li><code>{esc(n)}</code>: {esc(d)}</li>" for n, d in items) + "</ul>"


_BUILDERS = {
    "status": sec_status, "summary": sec_summary, "setup": sec_setup, "accuracy": sec_accuracy,
    "curves": sec_curves, "confusion": sec_confusion, "per-class": sec_per_class, "failures": sec_failures,
    "comparison": sec_comparison, "canonical": sec_canonical, "neighbours": sec_neighbours,
    "calibration": sec_calibration, "robustness": sec_robustness, "faithfulness": sec_faithfulness,
    "shortcut": sec_shortcut, "files": sec_files,
}


def page(report: ReportData, figs: dict[str, FigureRef]) -> str:
    """The whole page as text."""
    toc = "".join(f'<li><a href="#{sid}">{esc(title)}</a></li>' for sid, title in SECTIONS)
    notes = "".join(para(n, "note") for n in report.notes)
    body = "".join(f'<section id="{sid}"><h2>{esc(title)}</h2>{_BUILDERS[sid](report, figs)}</section>'
                   for sid, title in SECTIONS)
    meta = (f"dataset {report.dataset} ({report.num_classes} classes) · baseline '{report.baseline}' · "
            f"confidence threshold {report.threshold:g} · results as of {report.generated_at}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>cnnstress report: {esc(report.sweep)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>cnnstress report: {esc(report.sweep)}</h1><p class=\"meta\">{esc(meta)}</p>{notes}"
            f"<nav class=\"toc\"><strong>Contents</strong><ol>{toc}</ol></nav>{body}</main></body></html>\n")
