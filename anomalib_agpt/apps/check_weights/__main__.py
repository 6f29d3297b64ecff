"""``python -m anomalib_agpt.apps.check_weights``: the same as ``anomalib-agpt check-weights``."""

import sys

from anomalib_agpt.apps.check_weights.command import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
