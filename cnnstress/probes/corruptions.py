"""Corrupted test sets: generated on the device (corrupt.py, in the spirit of CIFAR-10-C) or read
from the published CIFAR-10-C / CIFAR-100-C files (cifar_c.py). Read by the robustness section."""

from __future__ import annotations

from typing import Any

from .. import catalog
from ..catalog import Param, suggest
from ..layout import Field
from .base import Probe

# Corruptions are generated per fixed-size batch so the corrupted test set is the same for every
# run of a sweep, whatever its eval_batch_size.
STRESS_BATCH = 500


class CorruptionsProbe(Probe):
    name = "corruptions"
    keys = {
        "corruptions": Param([], doc="names, or [\"all\"]"),
        # generated: corrupt.py's corruptions, made on the device; official: the published CIFAR-10-C /
        # CIFAR-100-C files under the data root (cifar_c.py), whose 19 names the corruptions are then
        "source": Param("generated", choices=("generated", "official"),
                        doc="generated (corrupt.py) | official (CIFAR-10-C / CIFAR-100-C files)"),
        "severities": Param([1, 3, 5], 1, 5),
        # the sweep's seed of every sampled thing of the stress tests (corrupted images, attacked
        # positions, OOD samples): the same for every run of a sweep
        "seed": Param(0, 0, 2**31 - 1),
    }
    # Where corrupted test images come from: "generated" (corrupt.py, on the device) or "official"
    # (the published files). Left out of a run's identity while "generated", so run ids of grids
    # written before it existed do not change.
    fields = {"corruptions": [], "severities": [1, 3, 5], "corruption_seed": 0, "source": "generated"}
    kept = ("corruptions", "severities", "corruption_seed")
    rows = (
        Field("stress/<corruption>/<severity>/logits", "float16", ("N", "C"), check="logits", chunked=True,
              doc="logits on the corrupted test set"),
    )
    section = "robustness"

    def resolve(self, v: Any, stress: dict[str, Any], *, dataset: str | None, data_root: str) -> dict[str, Any]:
        if stress["source"] == "official":
            corruptions = _official_corruptions(v, stress["corruptions"])
        else:
            _official_only(v, stress["corruptions"])
            corruptions = _generated(v, stress["corruptions"])
        severities = v.int_list(stress["severities"], "[stress].severities", 1, 5)
        if stress["source"] == "official":
            _check_official(v, dataset)
        return {"corruptions": corruptions, "severities": severities, "corruption_seed": stress["seed"],
                "source": stress["source"]}

    def enabled(self, stress: Any) -> bool:
        return bool(stress.corruptions)

    def measure(self, pred, data, spec, log):
        import torch

        st = spec.stress
        official = st.source == "official"
        if official:
            from .. import cifar_c  # numpy only

            official_labels = cifar_c.official_test_labels(spec.dataset.name, spec.paths.data_root)
        out = {}
        for name in st.corruptions:
            for sev in st.severities:
                if official:
                    # the published file's images of this severity, in the order of the stored test positions
                    images = cifar_c.load_corruption(spec.dataset.name, spec.paths.data_root, name, sev,
                                                     test_labels=official_labels)[data.splits.test.index]
                    clog, _ = pred.predict(torch.from_numpy(images).to(data.test.x.device), STRESS_BATCH)
                else:
                    clog = _generated_corruption(pred, data.test, st.corruption_seed, name, sev)
                out[f"stress/{name}/{sev}/logits"] = clog.cpu().numpy()
        side = int(data.test.x.shape[-1])
        where = (f"the official {cifar_c.official_set(spec.dataset.name).folder} files" if official
                 else "generated on the device" + (f", spatial parameters scaled from 32 to {side} px" if side != 32 else ""))
        log(f"evaluated {len(st.corruptions)} corruptions x {len(st.severities)} severities ({where})")
        return out


def _generated_corruption(pred: Any, test: Any, seed: int, name: str, sev: int) -> Any:
    """Logits on the test split corrupted batch by batch, each batch from its own seed (corrupt_seed)."""
    import torch

    from ..corrupt import corrupt, corrupt_seed

    def transform(x01: torch.Tensor, b: int) -> torch.Tensor:
        g = torch.Generator(device=x01.device)
        g.manual_seed(corrupt_seed(seed, name, sev, b))
        return corrupt(x01, name, sev, g)

    return pred.predict(test.x, STRESS_BATCH, transform=transform)[0]


def _generated(v: Any, value: Any) -> list[str]:
    """[stress].corruptions with source = "generated": corrupt.py's names (or ["all"]), in the catalog's order."""
    path = "[stress].corruptions"
    if value == ["all"]:
        return list(catalog.CORRUPTIONS)
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise v.fail(path, f"must be a list of corruption names, got {value!r}"[:300])
    for x in value:
        if x not in catalog.CORRUPTIONS:
            raise v.fail(path, f"{x!r} is not a corruption{suggest(x, catalog.CORRUPTIONS)}; allowed: {', '.join(catalog.CORRUPTIONS)} or [\"all\"]"[:500])
    if len(set(value)) != len(value):
        raise v.fail(path, f"has duplicates: {value}")
    return [c for c in catalog.CORRUPTIONS if c in value]


def _official_corruptions(v: Any, value: Any) -> list[str]:
    """[stress].corruptions with source = "official": names of the published files (or ["all"]), in
    the published order."""
    from .. import cifar_c  # numpy only; loaded when a grid asks for the official files

    path, names = "[stress].corruptions", cifar_c.CORRUPTIONS
    if value == ["all"]:
        return list(names)
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise v.fail(path, f"must be a list of corruption names, got {value!r}"[:300])
    for x in value:
        if x not in names:
            raise v.fail(path, f"{x!r} is not an official CIFAR-C corruption (source = \"official\")"
                               f"{suggest(x, names)}; allowed: {', '.join(names)} or [\"all\"]"[:600])
    if len(set(value)) != len(value):
        raise v.fail(path, f"has duplicates: {value}")
    return [c for c in names if c in value]


def _official_only(v: Any, value: Any) -> None:
    """A generated-source grid that names a corruption only the official files have: say so."""
    if not isinstance(value, list):
        return
    unknown = [x for x in value if isinstance(x, str) and x not in catalog.CORRUPTIONS and x != "all"]
    if unknown:
        from .. import cifar_c

        if unknown[0] in cifar_c.CORRUPTIONS:
            raise v.fail("[stress].corruptions", f"{unknown[0]!r} is a corruption of the official CIFAR-C files: set "
                                                 "[stress].source = \"official\" to read them; generated corruptions: "
                                                 f"{', '.join(catalog.CORRUPTIONS)}")


def _check_official(v: Any, dataset: Any) -> None:
    """source = "official" needs a CIFAR dataset. Its files are looked for at launch
    (launcher.missing_files), not here: gather and --status re-read the grid on machines that may
    not hold them."""
    from .. import cifar_c

    if dataset not in catalog.DATASETS:
        return  # [base].dataset's own check says what is wrong with it
    if dataset not in cifar_c.DATASETS:
        raise v.fail("[stress].source", f"\"official\" reads the published CIFAR-10-C / CIFAR-100-C files, which exist "
                                        f"for {' and '.join(cifar_c.DATASETS)} only, not {dataset}; use source = "
                                        "\"generated\"")


PROBE = CorruptionsProbe()
