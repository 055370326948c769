"""Tests for cnnstress.report: a self-contained, escaped index.html with every section, valid PNG
figures, 100-class rendering without images, and a real headless-Chromium render."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import synth
from cnnstress import gather
from cnnstress.report import html as report_html

EVIL = "<script>alert(1)</script>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class PageParser(HTMLParser):
    """Collects ids, links, image sources, h2 texts and tag names of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.tags: list[str] = []
        self.h2: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if "href" in a:
            self.hrefs.append(a["href"])
        if "src" in a:
            self.srcs.append(a["src"])
        self._in_h2 = tag == "h2"
        if tag == "h2":
            self.h2.append("")

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2:
            self.h2[-1] += data


def parse(page: str) -> PageParser:
    p = PageParser()
    p.feed(page)
    return p


@pytest.fixture(scope="module")
def shapes_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report") / "my data's \"dir\""
    s = synth.make_sweep(root, variants=("baseline", "cropflip"), seeds=(1, 2, 3), n_test=200,
                         failed={("cropflip", 3): EVIL})
    index = gather.gather(s.sweep_dir, console=Console(file=io.StringIO(), width=200))
    return s, index, index.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def cifar100_report(tmp_path_factory):
    """100 classes, one seed, no dataset on disk (images unavailable)."""
    root = tmp_path_factory.mktemp("report100") / "c100 'x'"
    s = synth.make_sweep(root, name="c100", dataset="cifar100", variants=("baseline", "cutmix"), seeds=(7,),
                         n_test=600, corruptions=("contrast",), severities=(2,), threshold=0.5, top_failures=6,
                         canonical=3)
    index = gather.gather(s.sweep_dir, console=Console(file=io.StringIO(), width=200))
    return s, index, index.read_text(encoding="utf-8")


def test_page_is_self_contained(shapes_report) -> None:
    _, _, page = shapes_report
    p = parse(page)
    assert p.srcs, "figures are embedded"
    for src in p.srcs:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_MAGIC
    for href in p.hrefs:
        assert href.startswith("#"), f"link out of the page: {href}"
    assert "http://" not in page and "https://" not in page
    assert "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags


def test_toc_links_to_existing_ids_and_every_section(shapes_report) -> None:
    _, _, page = shapes_report
    p = parse(page)
    targets = [h[1:] for h in p.hrefs]
    # the table of contents: one link per section, in page order (Findings links to sections too)
    assert [h for h in targets if h in dict(report_html.SECTIONS)][:len(report_html.SECTIONS)] == [
        sid for sid, _ in report_html.SECTIONS]
    for sid in targets:
        assert sid in p.ids, f"link #{sid} has no target"
    assert p.h2 == [title for _, title in report_html.SECTIONS]
    for sid, _ in report_html.SECTIONS:
        assert sid in p.ids


def test_hostile_reason_is_escaped(shapes_report) -> None:
    s, _, page = shapes_report
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert s.run("cropflip", 3).run_id in page


def test_sections_hold_their_content(shapes_report) -> None:
    s, index, page = shapes_report
    summary = json.loads((index.parent / "summary.json").read_text())
    # the shortcut sentence in words, with both variants' percentages
    fb = {v: summary["variants"][v]["shortcut"]["follows_background"] for v in ("baseline", "cropflip")}
    sentence = (f"baseline follows the background on {100 * fb['baseline']:.1f}% of conflicting images; "
                f"cropflip on {100 * fb['cropflip']:.1f}%.")
    assert sentence in page
    assert summary["comparisons"][0]["verdict"] in html.unescape(page)
    assert "train.augment" in page  # what differs between cropflip and the baseline
    for name in ("corrected", "worsened", "both wrong", "both right", "McNemar"):
        assert name in page
    assert "images unavailable" not in page
    # calibration under corruption: the robustness table carries NLL, Brier and ECE after T per variant
    for head in ("ECE corrupted after T", "NLL corrupted", "Brier corrupted"):
        assert f"<th>{head}</th>" in page
    for v in summary["variants"].values():
        for k in ("ece_after", "nll", "brier"):
            assert f'<td class="num">{v[f"mean_corruption_{k}"]:.3f}</td>' in page, k


def test_figure_files_are_valid_pngs(shapes_report) -> None:
    _, index, page = shapes_report
    files = sorted((index.parent / "figures").glob("*.png"))
    names = {f.name for f in files}
    for expected in ("overview.png", "val_accuracy.png", "thresholds.png", "confidence_hist.png",
                     "reliability.png", "reliability_corrupted.png", "robustness.png", "faithfulness.png", "shortcut.png", "per_class.png",
                     "neighbours.png", "curves_baseline.png", "confusion_cropflip.png",
                     "top_failures_baseline.png", "waterfall_cropflip.png", "canonical_cropflip.png"):
        assert expected in names
    for f in files:
        data = f.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, f.name
        assert base64.b64encode(data).decode() in page, f"{f.name} is not the embedded figure"
    assert len(parse(page).srcs) == len(files)


def test_hundred_classes_without_images(cifar100_report) -> None:
    s, index, page = cifar100_report
    summary = json.loads((index.parent / "summary.json").read_text())
    assert summary["images_available"] is False
    assert "test images unavailable" in page
    assert len(summary["comparisons"]) == 1
    assert all(v["n_runs"] == 1 and v["test_accuracy_std"] is None for v in summary["variants"].values())
    figs = {f.name: f for f in (index.parent / "figures").glob("*.png")}
    assert {"confusion_baseline.png", "confusion_cutmix.png", "waterfall_cutmix.png", "per_class.png",
            "canonical_cutmix.png"} <= set(figs)
    assert all(figs[n].stat().st_size > 5000 for n in figs)
    assert not any(n.startswith("top_failures_") for n in figs), "no images: top failures are a table"
    assert not any(n.startswith("neighbours") for n in figs), "no images: neighbours are a table"
    assert "most confident failures (seed 7)" in page and "neighbours (train index" in page
    # 100 classes: no per-cell numbers in the confusion matrix
    assert "With more than 20 classes the cells carry no numbers." in page
    # every class in the waterfall (a tall figure: >= 0.13 in per bar at 100 dpi) and in the sorted table
    import matplotlib.image as mpimg

    assert mpimg.imread(figs["waterfall_cutmix.png"]).shape[0] >= 100 * 13
    base, var = s.run("baseline", 7), s.run("cutmix", 7)
    delta = {}
    for c in range(100):
        inside = base.arrays["test/label"] == c
        acc = [float(np.mean(np.argmax(r.arrays["test/logits"][inside], axis=1) == c)) for r in (base, var)]
        delta[c] = acc[1] - acc[0]
    want = sorted(range(100), key=lambda c: (-delta[c], c))
    section = page.split('<section id="per-class">', 1)[1].split("</section>", 1)[0]
    rows = re.findall(r"<tr><td>(class \d+)</td><td class=\"num\">[^<]*</td><td class=\"num\">[^<]*</td>"
                      r"<td class=\"num\">([^<]*)</td></tr>", section)
    assert [name for name, _ in rows] == [f"class {c}" for c in want]
    assert [float(d) for _, d in rows] == pytest.approx([100 * delta[c] for c in want], abs=0.006)
    assert 0 <= summary["runs"][0]["test_accuracy"] <= 1


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)")
def test_headless_chromium_render(shapes_report, tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    _, index, _ = shapes_report
    shot = tmp_path / "shot.png"
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                           "--window-size=1400,3000", "--hide-scrollbars", index.resolve().as_uri()],
                          capture_output=True, text=True, timeout=60)
    assert shot.is_file(), proc.stderr[-2000:]
    assert shot.stat().st_size > 50_000
    img = mpimg.imread(shot)
    assert img.shape[0] == 3000 and img.shape[1] == 1400
    assert float(np.std(img[..., :3])) > 0.05, "the screenshot is (nearly) a single colour"
    # the lower half holds figures too (the page is long and laid out, not one line of text)
    assert float(np.std(img[1500:, :, :3])) > 0.05


# ---- official CIFAR-10-C files: the reference curve and the corruption error ------------

OFFICIAL = ("fog", "jpeg_compression", "saturate")  # two benchmark corruptions and an extra one


def _official_sweep(root: Path, monkeypatch, dataset: str = "cifar10", source: str = "official", name: str = "off"):
    """A synthetic sweep whose grid reads the official files (fake ones under the data root: the grid
    only looks for them; synth plants the logits)."""
    from test_cifar_c import write_fake_cifar_c

    classes = 10 if dataset == "cifar10" else 100
    write_fake_cifar_c(root / "data", dataset, names=OFFICIAL, labels=np.arange(120) % classes)
    real = getattr(synth.grid_text, "__wrapped__", synth.grid_text)

    def with_source(*args, **kwargs):
        return real(*args, **kwargs).replace("[stress]\n", f'[stress]\nsource = "{source}"\n')

    with_source.__wrapped__ = real
    monkeypatch.setattr(synth, "grid_text", with_source)
    corruptions = OFFICIAL if source == "official" else ("contrast", "fog")
    return synth.make_sweep(root, name=name, dataset=dataset, variants=("baseline", "cutout"), seeds=(1, 2, 3),
                            n_test=120, corruptions=corruptions, severities=(1, 3, 5))


def _gathered(s, monkeypatch) -> tuple[dict, str, list]:
    """summary.json, the page, and the reference handed to the robustness figure (captured)."""
    from cnnstress.report import figures as F

    seen = []
    real = F.robustness

    def spy(items, reference=None, means=None):
        seen.append((reference, means))
        return real(items, reference=reference, means=means)

    monkeypatch.setattr(F, "robustness", spy)
    index = gather.gather(s.sweep_dir, console=Console(file=io.StringIO(), width=200))
    summary = json.loads((index.parent / "summary.json").read_text(encoding="utf-8"))
    return summary, index.read_text(encoding="utf-8"), seen


def _acc(run, corruption: str, sev: int, labels: np.ndarray) -> float:
    logits = run.arrays[f"stress/{corruption}/{sev}/logits"]
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def test_official_cifar10_report_shows_the_reference_and_every_runs_ce(tmp_path, monkeypatch) -> None:
    from cnnstress import cifar_c

    s = _official_sweep(tmp_path / "sweep \"root\" it's", monkeypatch)
    assert s.grid.runs[0].stress.source == "official"
    summary, page, seen = _gathered(s, monkeypatch)
    ref = cifar_c.REFERENCE_CIFAR10C
    assert summary["corruption_source"] == "official"
    assert summary["corruption_reference"]["accuracy"] == ref["accuracy"]
    # the figure got the reference and each cell's mean over the benchmark corruptions present
    (reference, means), = seen
    assert reference == ref and [c.label for c, _ in means] == ["baseline", "cutout"]
    for c, m in means:
        assert m["n_corruptions"] == 2 and m["severities"] == [1, 3, 5]
        runs = [r for r in s.runs if r.spec.variant == c.variant]
        for i, sev in enumerate((1, 3, 5)):
            want = np.mean([np.mean([_acc(r, n, sev, s.labels) for r in runs]) for n in ("fog", "jpeg_compression")])
            assert m["accuracy"][i] == pytest.approx(want, abs=1e-12)
    body = page.split('id="robustness"', 1)[1].split("</section>", 1)[0]
    assert html.escape(ref["label"], quote=False) in body or ref["label"] in html.unescape(body)
    assert ref["source"] in html.unescape(body) and "73.46%" in body
    # CE per run against a plain computation: the baseline's error averaged over its three seeds
    base = [r for r in s.runs if r.spec.variant == "baseline"]
    rows = {r["run_id"]: r for r in summary["runs"]}
    for run in s.runs:
        row = rows[run.run_id]
        want = {}
        for n in OFFICIAL:
            err = sum(1 - _acc(run, n, sev, s.labels) for sev in (1, 3, 5))
            base_err = sum(1 - np.mean([_acc(b, n, sev, s.labels) for b in base]) for sev in (1, 3, 5))
            want[n] = err / base_err
        assert row["corruption_error"] == pytest.approx(want, rel=1e-9), run.run_id
        assert row["mce"] == pytest.approx(np.mean(list(want.values())), rel=1e-9)
    for variant in ("baseline", "cutout"):
        v = summary["variants"][variant]
        runs = [rows[r.run_id] for r in s.runs if r.spec.variant == variant]
        assert v["mce"] == pytest.approx(np.mean([r["mce"] for r in runs]), rel=1e-9)
        assert v["corruption_error"]["fog"] == pytest.approx(np.mean([r["corruption_error"]["fog"] for r in runs]))
    assert summary["variants"]["baseline"]["mce"] == pytest.approx(1.0, abs=0.05)  # its seeds scatter around 1
    assert "Corruption error relative to the baseline (baseline)" in html.unescape(body)
    assert "mCE" in body


def test_reference_curve_only_for_cifar10_with_the_official_files(tmp_path, monkeypatch) -> None:
    # CIFAR-100 with its official files: CE, but no CIFAR-10 reference
    s = _official_sweep(tmp_path / "c100", monkeypatch, dataset="cifar100", name="off100")
    summary, page, seen = _gathered(s, monkeypatch)
    assert summary["corruption_source"] == "official" and summary["corruption_reference"] is None
    assert seen == [(None, None)] and "RobustBench" not in page
    assert all(r["mce"] is not None for r in summary["runs"])
    assert "published CIFAR-100-C files" in page
    # CIFAR-10 with generated corruptions: no reference, a word that these are not the published files
    s = _official_sweep(tmp_path / "gen", monkeypatch, source="generated", name="gen10")
    summary, page, seen = _gathered(s, monkeypatch)
    assert summary["corruption_source"] == "generated" and summary["corruption_reference"] is None
    assert seen == [(None, None)] and "RobustBench" not in page
    assert "not directly comparable with published CIFAR-10-C results" in page
    assert set(summary["runs"][0]["corruption_error"]) == {"contrast", "fog"}


def test_robustness_figure_draws_the_reference_panel() -> None:
    from cnnstress import cifar_c
    from cnnstress.report import figures as F
    from cnnstress.report.model import Cell

    cell = Cell(label="baseline", variant="baseline", group="", is_baseline=True, color=0, acc_mean=0.9)
    stress = {"fog": {"severities": [1, 3], "accuracy": [0.8, 0.6]}}
    ref = cifar_c.REFERENCE_CIFAR10C
    plain = F.robustness([(cell, stress)])
    fig = F.robustness([(cell, stress)], reference=ref,
                       means=[(cell, {"severities": [1, 3], "accuracy": [0.8, 0.6], "n_corruptions": 1})])
    assert len([a for a in fig.axes if a.axison]) == len([a for a in plain.axes if a.axison]) + 1
    first = fig.axes[0]
    labels = [" ".join(line.get_label().split()) for line in first.get_lines()]  # wrapped to fit the panel
    assert any(ref["label"] in lab and ref["source"] in lab for lab in labels)
    line = next(ln for ln in first.get_lines() if ref["label"] in " ".join(ln.get_label().split()))
    assert list(line.get_ydata()) == [ref["clean_accuracy"]] + ref["accuracy"]


# --- class names that look like mathtext or HTML -------------------------------------------------

# "$$" and "$\frac{$" made matplotlib's mathtext parser raise, which aborted the whole report
ODD_NAMES = ["$x^2$", "a_b$", "$$", "\\frac{", "$\\frac{$", "<b>&amp;</b>", "50$ & 100%", "c7", "c8", "c9"]


def _odd_names_sweep(root: Path):
    import pickle

    from fake_cifar import write_fake_cifar

    s = synth.make_sweep(root, name="odd", dataset="cifar10", variants=("baseline", "cutout"), seeds=(1, 2),
                         n_test=100, corruptions=("contrast",), severities=(1,), canonical=3, top_failures=4)
    folder = write_fake_cifar(s.grid.runs[0].paths.data_root, "cifar10", n_train=50, n_test=100)
    with open(folder / "test_batch", "rb") as fh:
        test = pickle.load(fh, encoding="bytes")
    test[b"labels"] = [int(v) for v in s.labels]  # the stored labels: images are shown too
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump(test, fh, protocol=2)
    with open(folder / "batches.meta", "rb") as fh:
        meta = pickle.load(fh, encoding="bytes")
    meta[b"label_names"] = [n.encode() for n in ODD_NAMES]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return s


def test_odd_class_names_are_drawn_as_typed(tmp_path, monkeypatch) -> None:
    from matplotlib.text import Text

    from cnnstress.report import figures as F

    s = _odd_names_sweep(tmp_path / "odd 'names'")
    drawn: list[tuple[str, bool]] = []
    real = F.plain_text

    def spy(fig):  # every Text of every figure, as it is laid out for saving
        real(fig)
        fig.canvas.draw()
        drawn.extend((t.get_text(), t.get_parse_math()) for t in fig.findobj(Text) if t.get_text())
        return fig

    monkeypatch.setattr(F, "plain_text", spy)
    index = gather.gather(s.sweep_dir, console=Console(file=io.StringIO(), width=200))
    page = index.read_text(encoding="utf-8")
    texts = [t for t, _ in drawn]
    for name in ODD_NAMES[:7]:
        assert name in texts, f"{name!r} is not drawn as typed"  # a tick label holds the name exactly
        assert html.escape(name) in page
    assert "<b>&amp;</b>" not in page
    assert not [t for t, math in drawn if math], "some text would still be parsed as mathtext"
    assert any("$x^2$" in t and t != "$x^2$" for t in texts)  # also inside longer captions and titles


def test_odd_class_names_through_the_command_line(tmp_path) -> None:
    s = _odd_names_sweep(tmp_path / "odd cli")
    proc = subprocess.run([sys.executable, "-m", "cnnstress.gather", str(s.sweep_dir)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_one_seed_says_there_is_no_noise_floor(cifar100_report) -> None:
    s, index, page = cifar100_report
    out = io.StringIO()
    gather.gather(s.sweep_dir, console=Console(file=out, width=200), figures=False)
    assert "one baseline seed gives no noise floor" in page
    for text in (page, out.getvalue(), (index.parent / "runs.csv").read_text()):
        assert not re.search(r"\bnan\b|nan%|\binf\b", text, re.IGNORECASE)


# ------------------------------------------------------------------------------ image sides 16..128


@pytest.mark.parametrize("side", [16, 32, 64, 128])
def test_mosaic_draws_whole_tiles_at_every_image_side(side):
    from cnnstress.report import figures as F

    rng = np.random.default_rng(side)
    tiles = [[rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(3)], [None, None, None]]
    fig = F.mosaic(tiles, [["a", "b", "c"], ["", "", ""]], "tiles")
    canvas = fig.axes[0].images[0].get_array()
    pad = max(4, round(4 * side / 32))
    assert canvas.shape[1] == 3 * (side + 2 * pad)
    for k, tile in enumerate(tiles[0]):  # every tile whole, where its cell puts it (none cropped to 32 px)
        np.testing.assert_allclose(canvas[pad:pad + side, k * (side + 2 * pad) + pad:][:, :side], tile / 255.0)
    # no image pixel is drawn smaller than one pixel of the PNG
    width_px = fig.get_size_inches()[0] * fig.dpi
    assert width_px >= canvas.shape[1] - 1e-6
    if side == 32:  # the 32 px layout is the one it always was
        assert pad == 4 and fig.get_size_inches()[0] == pytest.approx(3 * 1.25)


def test_overlay_resizes_a_map_of_another_size_to_the_image():
    from cnnstress.analysis.gradcam import upsample_bilinear
    from cnnstress.report import figures as F

    image = np.full((64, 64, 3), 100, np.uint8)
    cam = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    out = F.overlay(image, cam)
    assert out.shape == (64, 64, 3)
    np.testing.assert_allclose(out, F.overlay(image, upsample_bilinear(cam[None], 64)[0]))


# ---- figures: readable numbers, colours that mean variants only -------------------------------

def _luminance(rgb) -> float:
    """WCAG 2 relative luminance, written out here from the definition (sRGB, 0..1 floats)."""
    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(float(c)) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(a, b) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def _cell(label: str = "baseline", colour: int = 0, runs: int = 3):
    from cnnstress.report.model import Cell

    return Cell(label=label, variant=label, group="", is_baseline=colour == 0, color=colour,
                run_ids=[f"{label}-{i}" for i in range(runs)])


@pytest.mark.parametrize("kind", ["near chance", "good", "one confusion"])
def test_confusion_numbers_contrast_with_their_cells(kind: str) -> None:
    """Every number printed in a confusion matrix has a WCAG contrast of at least 4.5 with its cell
    (or, where neither black nor white reaches it, the better of the two), the cell's colour
    computed here from the Blues colormap and the panel's range."""
    import matplotlib
    from matplotlib import colormaps, colors

    from cnnstress.report import figures as F

    rng = np.random.default_rng({"near chance": 1, "good": 2, "one confusion": 3}[kind])
    c = 10
    if kind == "near chance":  # row-normalised values around 0.1-0.3: the pale cells
        cm = rng.integers(2, 12, size=(c, c)) + np.diag(rng.integers(5, 25, size=c))
    elif kind == "good":
        cm = rng.integers(0, 4, size=(c, c)) + np.diag(rng.integers(30, 60, size=c))
    else:
        cm = np.diag(np.full(c, 40))
        cm[0, 1] = 35
    with matplotlib.rc_context(F.STYLE):
        fig = F.confusion(_cell(), cm, [f"class {i}" for i in range(c)])
    counts_ax, norm_ax = fig.axes[0], fig.axes[2]
    norm = cm / cm.sum(axis=1, keepdims=True)
    blues = colormaps["Blues"]
    checked = 0
    for ax, mat, vmax in ((counts_ax, cm, cm.max()), (norm_ax, norm, 1.0)):
        assert len(ax.texts) == int(np.count_nonzero(mat))
        for t in ax.texts:
            j, i = (int(round(v)) for v in t.get_position())
            cell = blues(float(mat[i, j]) / vmax)
            text = colors.to_rgb(t.get_color())
            best = max(_contrast(cell, (0, 0, 0)), _contrast(cell, (1, 1, 1)))
            got = _contrast(cell, text)
            assert got >= min(4.5, best) - 1e-9, (kind, i, j, float(mat[i, j]), t.get_color(), got)
            checked += 1
    assert checked > c


def _variant_palette() -> list[tuple[float, float, float]]:
    from matplotlib import colormaps

    return [tuple(colormaps["tab10"](i)[:3]) for i in range(10)]


def _fills(fig) -> list[tuple[float, float, float]]:
    """Face colours of every bar, patch and legend handle of a figure, less the figure's and the
    axes' backgrounds and fully transparent patches."""
    from matplotlib.patches import Patch

    backgrounds = {id(fig.patch)} | {id(ax.patch) for ax in fig.axes}
    return [tuple(p.get_facecolor()[:3]) for p in fig.findobj(Patch)
            if id(p) not in backgrounds and p.get_facecolor()[3] > 0]


def _assert_no_variant_hue(fig, what: str) -> None:
    palette = _variant_palette()
    used = {c for c in _fills(fig) if c != (1.0, 1.0, 1.0)}  # white: backgrounds, legend frames
    assert used, f"{what}: nothing drawn"
    for col in used:
        dist = min(float(np.linalg.norm(np.subtract(col, p))) for p in palette)
        assert dist > 0.25, f"{what}: category colour {col} is (close to) the variant colour at distance {dist:.2f}"


def test_shortcut_figure_categories_are_not_variant_colours() -> None:
    """The shortcut figure's bars are categories (right/wrong predictions, aligned/conflicting,
    follows the background), one group per variant on the x axis: none of their colours may be a
    variant's (tab10), so blue and orange keep meaning baseline and variant."""
    import matplotlib

    from cnnstress.report import figures as F

    sc = {"energy_right": 0.4, "energy_wrong": 0.2, "acc_aligned": 0.8, "acc_conflicting": 0.5,
          "follows_background": 0.3}
    with matplotlib.rc_context(F.STYLE):
        fig = F.shortcut([(_cell("baseline", 0), sc), (_cell("cropflip", 1), dict(sc, follows_background=0.1))])
    _assert_no_variant_hue(fig, "shortcut")
    # the three measures of the second panel stay told apart (colour or hatch)
    bars = [p for p in fig.axes[1].patches]
    styles = {(tuple(p.get_facecolor()), p.get_hatch()) for p in bars}
    assert len(styles) == 3


def test_category_figures_use_no_variant_colour() -> None:
    """Waterfall (gain/loss) and confidence histograms (right/wrong) draw categories, not variants."""
    import matplotlib

    from cnnstress.report import figures as F
    from cnnstress.report.model import Comparison

    comp = Comparison(variant="cropflip", baseline="baseline", group="", label="cropflip", stats={})
    delta = np.array([0.05, -0.03, 0.0, 0.1])
    edges = np.linspace(0, 1, 11)
    hist = {"edges": edges, "right_counts": np.arange(10), "wrong_counts": np.arange(10)[::-1]}
    with matplotlib.rc_context(F.STYLE):
        _assert_no_variant_hue(F.waterfall(comp, np.argsort(-delta), delta, list("abcd")), "waterfall")
        _assert_no_variant_hue(F.confidence_hist([(_cell("baseline", 0), hist), (_cell("cropflip", 1), hist)]),
                               "confidence histograms")


# ---- sentences ------------------------------------------------------------------------------

def _page_text(page: str) -> str:
    body = re.sub(r'src="[^"]*"', "", page)
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


def _double_stops(text: str) -> list[str]:
    """Each ".." that is neither part of an ellipsis ("...") nor a range between two words ("min..max")."""
    bad = []
    for m in re.finditer(r"(?<!\.)\.\.(?!\.)", text):
        before, after = text[m.start() - 1:m.start()], text[m.end():m.end() + 1]
        if not (before.isalnum() and after.isalnum()):
            bad.append(text[max(0, m.start() - 80):m.end() + 10])
    return bad


def test_no_generated_sentence_ends_in_two_full_stops(shapes_report) -> None:
    """Neither the page nor summary.json's sentences close a sentence with ".."; ranges and
    ellipses the report means are kept."""
    _, index, page = shapes_report
    text = _page_text(page)
    assert _double_stops(text) == []
    summary = json.loads((index.parent / "summary.json").read_text())
    lines = summary["summary"] + summary.get("findings", []) + [c["verdict"] for c in summary["comparisons"]]
    assert lines and _double_stops("\n".join(lines)) == []
    # the check itself: it finds the defect, and leaves ranges and ellipses alone
    assert _double_stops("its errors are different ones.. Next") and _double_stops("ones..")
    assert not _double_stops("band = min..max over seeds; ... of which")


def test_end_sentence_closes_with_one_full_stop() -> None:
    from cnnstress.report.markup import end_sentence

    assert end_sentence("its errors are different ones.") == "its errors are different ones."
    assert end_sentence("its errors are different ones") == "its errors are different ones."
    assert end_sentence("ones. ") == "ones."
    assert end_sentence("to be continued...") == "to be continued..."


# ---- the page in a browser at two window widths ------------------------------------------------

_MEASURE = r"""<script>
window.addEventListener('load', () => {
  const doc = document.documentElement;
  const box = e => { const b = e.getBoundingClientRect();
                     return {left: b.left, right: b.right, top: b.top + scrollY, bottom: b.bottom + scrollY}; };
  const out = {client: doc.clientWidth, scroll: doc.scrollWidth, h1: box(document.querySelector('h1')),
    images: [...document.images].map(i => ({id: i.closest('figure').id, natural: i.naturalWidth, ...box(i)})),
    tables: [...document.querySelectorAll('table')].map(t => ({holder: box(t.parentElement), ...box(t)}))};
  const pre = document.createElement('pre');
  pre.id = 'measured';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           *args], capture_output=True, text=True, timeout=120)


def _measure(index: Path, folder: Path, width: int) -> dict:
    """The laid-out page at ``width`` px: boxes of the h1, every figure image and every table (page
    coordinates), measured by a script in a copy of the page (the report itself has none)."""
    copy = folder / f"measured page {width}.html"
    copy.write_text(index.read_text(encoding="utf-8").replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
    proc = _chromium(f"--window-size={width},1000", "--dump-dom", copy.as_uri())
    found = re.search(r'<pre id="measured">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


@pytest.fixture(scope="module")
def wide_report(tmp_path_factory):
    """Six variants with long names: tables with a column per variant, wider than an 800-px window."""
    root = tmp_path_factory.mktemp("wide") / "wide 'page'"
    s = synth.make_sweep(root, name="wide", variants=("baseline", "crop_and_flip_long_name", "flip_only_variant",
                                                      "crop_only_variant", "rotation_variant", "cutout_variant"),
                         seeds=(1, 2), n_test=120, canonical=2, top_failures=4)
    index = gather.gather(s.sweep_dir, console=Console(file=io.StringIO(), width=200))
    return s, index, index.read_text(encoding="utf-8")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)")
@pytest.mark.parametrize("width", [1400, 800])
def test_page_fits_the_window_and_the_top_shows_heading_and_headline_figure(wide_report, tmp_path: Path,
                                                                          width: int) -> None:
    """At a 1400- and an 800-px wide window: the page never scrolls sideways, every figure scales
    into the column (never beyond the window, never enlarged past its pixels), a table wider than
    the window scrolls inside its own box; a screenshot of the top shows the heading and the
    headline (overview) figure whole, its right border inside the picture."""
    import matplotlib.image as mpimg

    _, index, _ = wide_report
    m = _measure(index, tmp_path, width)
    client = m["client"]
    assert client <= width
    assert m["scroll"] <= client, f"the page scrolls sideways at {width} px ({m['scroll']} > {client})"
    assert m["images"], "the page has figures"
    for img in m["images"]:
        assert img["left"] >= 0 and img["right"] <= client + 0.5, (width, img)
        # + its 1-px border on each side
        assert img["right"] - img["left"] <= img["natural"] + 2.5, f"{img['id']} is drawn larger than its pixels"
    for t in m["tables"]:
        assert t["holder"]["right"] <= client + 0.5, (width, t)
    overview = next(i for i in m["images"] if i["id"] == "fig-overview")
    height = int(overview["bottom"]) + 40
    shot = tmp_path / f"top {width}.png"
    proc = _chromium(f"--window-size={width},{height}", f"--screenshot={shot}", index.resolve().as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (height, width)
    h1 = img[int(m["h1"]["top"]):int(m["h1"]["bottom"]), :client]
    assert float(h1.min()) < 0.3, "the heading is drawn (dark text at the top)"
    top, bottom = int(overview["top"]) + 2, int(overview["bottom"]) - 2
    fig = img[top:bottom, int(overview["left"]) + 2:int(overview["right"]) - 2]
    assert float(np.std(fig)) > 0.05, "the headline figure is drawn, not blank"
    # the figure's 1-px border (#d9dee7) on its right edge: the image is not cut by the window
    # (layout positions are fractional: the border's column is within a pixel of the measured edge)
    border = np.array([0xd9, 0xde, 0xe7]) / 255
    near = range(int(overview["right"]) - 2, min(width, int(overview["right"]) + 2))
    assert any(np.allclose(np.median(img[top:bottom, x], axis=0), border, atol=0.03) for x in near), \
        "the headline figure's right border is not in the screenshot"
