"""Overlay folders for the emulated cards: the other builds the overlays' READMEs describe."""

from __future__ import annotations

import json
import shutil

from conftest import ROOT
from octoray.kernels import fpga

POPCOUNTS_MANIFEST = ROOT / "overlays" / fpga.CNV_OVERLAY / "manifest-popcounts.json"


def popcounts_overlays(folder, odt: str | None = None, pe: int | None = None, output: str | None = None,
                       normal=None) -> str:
    """An overlays folder with the shipped manifest-popcounts.json as cnv_w1a1_u50's manifest
    (a build that ends at fc3), as its README tells a user to install it; `odt` and `pe`
    describe another folding (FINN packs rows of PE elements), `output` and `normal` a
    manifest that does not fit."""
    target = folder / fpga.CNV_OVERLAY
    target.mkdir(parents=True)
    shutil.copy(POPCOUNTS_MANIFEST, target / "manifest.json")
    manifest = json.loads((target / "manifest.json").read_text())
    io = manifest["io_shape"]
    if odt is not None or pe is not None:
        width = int((odt or io["odt"]).lstrip("UINT"))
        pe = pe or 1
        io.update(odt=odt or io["odt"], oshape_folded=[1, 10 // pe, pe], oshape_packed=[1, 10 // pe, pe * width // 8])
    if output is not None:
        manifest["output"] = output
    if normal is not None:
        io["oshape_normal"] = list(normal)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return str(folder)
