"""The reference a FINN user has on a CPU: Brevitas' own CNV-W1A1 (`bnn_pynq` cnv_1w1a) over a
folder of images in sorted order, decoded with Pillow, in batches of 100.  Prints
PATH<TAB>LABEL like fclassify.

    python benchmarks/brevitas_classify.py DIR

Brevitas' network with its own initial weights: the figure is its speed (which does not depend
on the weights), not its labels.  Needs: pip install '.[bench]'.
"""

from __future__ import annotations

import argparse
import sys

from torch_classify import image_paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from brevitas_examples.bnn_pynq.models import model_with_cfg
    from PIL import Image

    from octoray.formats.cnv_input import CLASS_NAMES

    torch.set_num_threads(args.threads)
    model, _cfg = model_with_cfg("cnv_1w1a", pretrained=False)
    model.eval()
    paths = image_paths(args.folder)
    with torch.inference_mode():
        for start in range(0, len(paths), args.batch):
            group = paths[start:start + args.batch]
            pixels = np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32))) for f in group])
            x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0  # bnn_pynq takes [0, 1]
            for path, c in zip(group, model(x).argmax(1).tolist()):
                sys.stdout.write(f"{path}\t{CLASS_NAMES[c]}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
