"""Run status: every expected run, its status and state, and why a run is not in the numbers."""

from __future__ import annotations

from ..markup import Reason, para, pct, table
from .base import Section


class StatusSection(Section):
    id = "status"
    title = "Run status"
    depends = ("failures",)

    def html(self, report, figs):
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
                fails = cell.parts.get("failures")
                acc, hc = pct(cell.accuracies[i]), (str(fails.high_conf[i]) if fails else "-")
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


SECTION = StatusSection()
