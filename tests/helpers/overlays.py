"""Overlay folders for the emulated cards: manifests that describe other FINN builds."""

from __future__ import annotations

import json

from octoray.kernels import fpga


def popcounts_overlays(folder, odt: str = "INT16", pe: int = 2, output: str = "popcounts", normal=(1, 10)) -> str:
    """An overlays folder whose cnv_w1a1_u50 manifest describes a build that ends at fc3
    (FINN rounds the last layer's type to whole bytes: 16-bit words, `pe` a row)."""
    manifest = fpga.load_manifest(fpga.CNV_OVERLAY)
    del manifest["_dir"]
    width = int(odt.lstrip("UINT"))
    manifest["output"] = output
    manifest["io_shape"].update(odt=odt, oshape_normal=list(normal), oshape_folded=[1, 10 // pe, pe],
                                oshape_packed=[1, 10 // pe, pe * width // 8])
    (folder / fpga.CNV_OVERLAY).mkdir(parents=True)
    (folder / fpga.CNV_OVERLAY / "manifest.json").write_text(json.dumps(manifest))
    return str(folder)
