"""Out-of-distribution detection and selective prediction: can the model tell images of none of
its classes from test images (``/ood/<set>/logits``), and how accurate is it on the test images it
is most confident about (risk-coverage, from the stored test logits)."""

from __future__ import annotations

import re

import numpy as np

from ...analysis import compare, ood, selective
from ..markup import empty, figure, num, para, pct, table
from .base import FigureSpec, Metric, Section, cell_parts

_KEY = re.compile(r"^ood/([a-z0-9_]+)/logits$")
METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")
HIST_EDGES = np.linspace(0.0, 1.0, 31)  # maximum softmax probability: fixed edges, so seeds add up
COVERAGE = np.linspace(0.01, 1.0, 100)  # where risk-coverage curves are sampled to average over seeds


class OodSection(Section):
    id = "ood"
    title = "Out-of-distribution detection and selective prediction"
    run_keys = ("ood", "aurc", "augrc", "selective_accuracy_at_80", "selective_accuracy_at_90")

    def reduce(self, res, run):
        """Per OOD set: the metrics of every score and MSP histograms; the risk-coverage summary."""
        described = (res.attrs.get("ood_sets") or {}) if isinstance(res.attrs, dict) else {}
        msp_in = ood.ood_score(run.logits, "msp")
        sets = {}
        for key in res.keys():
            m = _KEY.match(key)
            if not m:
                continue
            logits = res.read(key)
            if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] != run.num_classes:
                continue
            sets[m.group(1)] = {
                "metrics": ood.ood_metrics(run.logits, logits),
                "hist_in": np.histogram(msp_in, HIST_EDGES)[0], "hist_out": np.histogram(ood.ood_score(logits, "msp"),
                                                                                           HIST_EDGES)[0],
                "kind": str((described.get(m.group(1)) or {}).get("kind", "")),
                "description": str((described.get(m.group(1)) or {}).get("description", "")),
                "count": int(logits.shape[0])}
        if not sets:  # [stress].ood off (selective prediction comes with it)
            return None
        rc = selective.risk_coverage(run.logits, run.labels)
        grc = selective.generalized_risk_coverage(run.logits, run.labels)
        summary = selective.selective_summary(run.logits, run.labels)
        # risk at fixed coverages (the curve is a step function of the distinct confidences)
        idx = np.searchsorted(rc["coverage"], COVERAGE - 1e-12, side="left").clip(0, len(rc["coverage"]) - 1)
        return {"sets": sets, "selective": summary, "risk": rc["risk"][idx], "grisk": grc["generalized_risk"][idx]}

    def aggregate(self, cell, parts, ctx):
        parts = [p for p in parts if p]
        if not parts:
            return None
        sets = {}
        for name in sorted(set.intersection(*(set(p["sets"]) for p in parts))):
            first = parts[0]["sets"][name]
            metrics = {score: {m: compare.mean_std_ci(np.array([p["sets"][name]["metrics"][score][m] for p in parts]),
                                                      bounds=(0.0, 1.0)) for m in METRICS} for score in ood.SCORES}
            sets[name] = {"metrics": metrics, "kind": first["kind"], "description": first["description"],
                          "count": first["count"], "hist_in": sum(p["sets"][name]["hist_in"] for p in parts),
                          "hist_out": sum(p["sets"][name]["hist_out"] for p in parts)}
        sel = {k: compare.mean_std_ci(np.array([p["selective"][k] for p in parts]))
               for k in ("aurc", "e_aurc", "augrc", "acc_at_80", "acc_at_90", "accuracy")}
        return {"sets": sets, "selective": sel, "risk": np.array([p["risk"] for p in parts]),
                "grisk": np.array([p["grisk"] for p in parts]), "seeds": len(parts)}

    def run_fields(self, run, part):
        if not part:
            return {k: None for k in self.run_keys}
        return {"ood": {name: s["metrics"] for name, s in part["sets"].items()},
                "aurc": part["selective"]["aurc"], "augrc": part["selective"]["augrc"],
                "selective_accuracy_at_80": part["selective"]["acc_at_80"],
                "selective_accuracy_at_90": part["selective"]["acc_at_90"]}

    def variant_fields(self, cell, agg):
        if not agg:
            return {"ood": None, "aurc_mean": None, "augrc_mean": None}
        return {"ood": {name: {score: {m: s["metrics"][score][m]["mean"] for m in METRICS} for score in ood.SCORES}
                        for name, s in agg["sets"].items()},
                "aurc_mean": agg["selective"]["aurc"]["mean"], "augrc_mean": agg["selective"]["augrc"]["mean"],
                "selective_accuracy_at_90_mean": agg["selective"]["acc_at_90"]["mean"]}

    def summary_lines(self, report):
        lines = []
        for c in report.cells:
            agg = c.parts.get(self.id)
            if not agg or not agg["sets"]:
                continue
            worst = min(agg["sets"].items(), key=lambda kv: kv[1]["metrics"]["msp"]["auroc"]["mean"])
            lines.append(f"{c.label}: hardest out-of-distribution set {worst[0]} (MSP AUROC "
                         f"{num(worst[1]['metrics']['msp']['auroc']['mean'])}); AURC "
                         f"{num(agg['selective']['aurc']['mean'])}.")
        return lines

    def figures(self, report):
        items = [(c, c.parts.get(self.id)) for c in report.cells]
        return [FigureSpec("ood_histograms", lambda: _draw_hist(items),
                           "Maximum softmax probability on test images (in) and on each out-of-distribution set "
                           "(out), pooled over seeds: the less they overlap, the easier the set is to flag."),
                FigureSpec("risk_coverage", lambda: _draw_risk(items),
                           "Risk (error rate) among the most confident test images against coverage; mean over "
                           "seeds (line), min..max (band). Lower is better; the area under it is the AURC."),
                FigureSpec("generalized_risk_coverage", lambda: _draw_risk(items, generalized=True),
                           "Generalised risk (answered and wrong, as a share of all test images) against coverage "
                           "(Traub et al. 2024); mean over seeds (line), min..max (band). The area under it is the "
                           "AUGRC: the average risk of a silent failure, lower is better.")]

    def html(self, report, figs):
        items = cell_parts(report.cells, self.id)
        if not items:
            return empty("No run stored out-of-distribution logits ([stress].ood is off).")
        rows = []
        for c, agg in items:
            for name, s in agg["sets"].items():
                for score in ood.SCORES:
                    m = s["metrics"][score]
                    rows.append([c.label, name, s["kind"], score, num(m["auroc"]["mean"]), _ci(m["auroc"]),
                                 num(m["aupr_in"]["mean"]), num(m["aupr_out"]["mean"]), pct(m["fpr95"]["mean"])])
        described = {name: s for _, agg in items for name, s in agg["sets"].items()}
        sets_text = "; ".join(f"{name} ({_kind(s['kind'])}, {s['count']} images): {s['description']}"
                              for name, s in described.items())
        sel_rows = [[c.label, num(a["selective"]["aurc"]["mean"]), _ci(a["selective"]["aurc"]),
                     num(a["selective"]["e_aurc"]["mean"]), num(a["selective"]["augrc"]["mean"]),
                     _ci(a["selective"]["augrc"]), pct(a["selective"]["accuracy"]["mean"]),
                     pct(a["selective"]["acc_at_90"]["mean"]), pct(a["selective"]["acc_at_80"]["mean"])]
                    for c, a in items]
        return (para("Scores from the logits (higher = more in-distribution): maximum softmax probability (MSP), "
                     "maximum logit and energy (logsumexp). AUROC: the chance that a test image scores higher than an "
                     "out-of-distribution one (0.5 = blind); FPR95: the share of out-of-distribution images still "
                     f"accepted when 95% of test images are. Sets: {sets_text}.")
                + table(("variant", "set", "kind", "score", "AUROC", "95% interval", "AUPR-in", "AUPR-out", "FPR95"),
                        rows, numeric=(4, 6, 7, 8))
                + figure(figs, "ood_histograms")
                + para("Selective prediction: the model answers only on the test images it is most confident about "
                       "(MSP). AURC is the mean error rate over all coverages (lower is better); E-AURC subtracts what "
                       "a perfect ranking of its own errors would reach. AUGRC (Traub et al. 2024) is the area under "
                       "the generalised risk, the wrong answers as a share of all test images: the average risk of "
                       "a silent failure over all coverages. AURC weighs the few most confident images heavily and "
                       "can rank methods differently; AUGRC is the one to compare when both are given.")
                + table(("variant", "AURC", "95% interval", "E-AURC", "AUGRC", "95% interval", "accuracy (all)",
                         "accuracy at 90% coverage", "accuracy at 80% coverage"), sel_rows, numeric=range(1, 9))
                + figure(figs, "risk_coverage") + figure(figs, "generalized_risk_coverage"))

    def metrics(self, part):
        out = [Metric(f"ood_auroc_{name}_{score}", f"OOD AUROC, {name} ({score})", s["metrics"][score]["auroc"], True,
                      points=False, headline=score == "msp")
               for name, s in part["sets"].items() for score in ood.SCORES]
        return out + [Metric("aurc", "AURC (selective risk)", part["selective"]["aurc"], False, points=False,
                             headline=True),
                      Metric("augrc", "AUGRC (generalised selective risk)", part["selective"]["augrc"], False,
                             points=False, headline=True)]


def _kind(kind: str) -> str:
    """near-OOD / far-OOD for the built-in sets; your own ([stress].ood_sets "folder:" / "npz:") are neither."""
    return f"{kind}-OOD" if kind in ("near", "far") else "your own set" if kind == "own" else kind or "set"


def _ci(stats: dict) -> str:
    return f"{num(stats['ci95'][0])} to {num(stats['ci95'][1])}" if stats["n"] > 1 else "one seed"


def _draw_hist(items):
    items = [(c, a) for c, a in items if a and a["sets"]]
    if not items:
        return None
    from .. import figures as F

    names = sorted({n for _, a in items for n in a["sets"]})
    fig, axes = F._panels(len(items) * len(names), per_row=len(names))
    centers = (HIST_EDGES[:-1] + HIST_EDGES[1:]) / 2
    width = HIST_EDGES[1] - HIST_EDGES[0]
    k = 0
    for c, a in items:
        for name in names:
            ax = axes[k]
            k += 1
            s = a["sets"].get(name)
            if s is None:
                ax.set_axis_off()
                continue
            # in vs out are categories, drawn in neutrals: a hue in the report means a variant only
            for counts, col, hatch, label in ((s["hist_in"], F.CATEGORY_LIGHT, None, "test (in)"),
                                              (s["hist_out"], "none", F.HATCH, f"{name} (out)")):
                ax.bar(centers, counts / max(1, counts.sum()), width=width, color=col, hatch=hatch,
                       edgecolor=F.CATEGORY_DARK, linewidth=0.5, alpha=0.8, label=label)
            ax.set(title=f"{c.label}: {name}\nAUROC {s['metrics']['msp']['auroc']['mean']:.3f}", xlabel="MSP",
                   ylabel="share of images")
            ax.legend(fontsize=6, loc="upper left")
    for ax in axes[k:]:
        ax.set_axis_off()
    return fig


def _draw_risk(items, generalized: bool = False):
    items = [(c, a) for c, a in items if a and (not generalized or "grisk" in a)]
    if not items:
        return None
    from .. import figures as F

    fig = F._figure(5.6, 3.8)
    ax = fig.subplots()
    key, area = ("grisk", "augrc") if generalized else ("risk", "aurc")
    for c, a in items:
        F._band(ax, COVERAGE, a[key], F.color(c), f"{c.label} ({area.upper()} {a['selective'][area]['mean']:.3f})")
    ylabel = ("generalised risk (wrong answers / all test images)" if generalized
              else "risk (error rate among them)")
    ax.set(xlabel="coverage (share of test images answered)", ylabel=ylabel, xlim=(0, 1), ylim=(0, None))
    ax.legend(fontsize=7, loc="upper left")
    return fig


SECTION = OodSection()
