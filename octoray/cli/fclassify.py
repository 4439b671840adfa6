"""fclassify: classify images with CNV-W1A1 (not ready yet: see the README's roadmap)."""

from __future__ import annotations

import sys


def main() -> int:
    sys.stderr.write("fclassify: not ready yet: the CNV-W1A1 model and its kernels are still being built\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
