"""What a user would run instead of fclassify: the trained float CNV-W1A1 in plain PyTorch on
the CPU (sign activations, BatchNorm, TensorNorm), over a folder of images in sorted order,
decoded with Pillow, in batches.  Prints PATH<TAB>LABEL like fclassify.

    python benchmarks/torch_classify.py DIR [--weights training/cnv-w1a1-st2b-best.npz]

Needs the training extra: pip install '.[train]'.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = ROOT / "training" / "cnv-w1a1-st2b-best.npz"


def image_paths(top: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(top):
        dirs.sort()
        found.extend(os.path.join(root, f) for f in sorted(files))
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="a --save-portable training state")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from octoray.formats.cnv_input import CLASS_NAMES
    from octoray.models.cnv import CNV
    from octoray.models.portable import load_portable

    torch.set_num_threads(args.threads)
    model = CNV()
    load_portable(args.weights, model)
    model.eval()
    paths = image_paths(args.folder)
    out = sys.stdout
    with torch.inference_mode():
        for start in range(0, len(paths), args.batch):
            group = paths[start:start + args.batch]
            pixels = np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32))) for f in group])
            logits = model(torch.from_numpy(pixels).permute(0, 3, 1, 2))
            for path, c in zip(group, logits.argmax(1).tolist()):
                out.write(f"{path}\t{CLASS_NAMES[c]}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
