"""``anomalib-agpt``: anomalib's CLI with the plugin imported (so ``--model AnomalyGPT`` works), plus ``demo``.

anomalib finds models by walking the imported subclasses of ``AnomalibModule``; nothing imports a
plugin before parsing, so the stock ``anomalib`` command only knows ``anomalib_agpt.AnomalyGPT``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: anomalib-agpt demo [--help]            run the offline demo (AnomalyGPT vs Patchcore)
       anomalib-agpt leaderboard [--help]     rank models on the same data/categories/seeds
       anomalib-agpt serve [--help]           web demo: heatmap, mask, score and a chat (needs [serve])
       anomalib-agpt {fit,validate,test,train,predict,export} ...   anomalib's CLI, --model AnomalyGPT
"""


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch ``demo``, ``leaderboard`` and ``serve`` to their modules and everything else to anomalib's CLI."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "demo":
        from anomalib_agpt.apps.demo import main as demo_main

        demo_main(args[1:])
        return
    if args and args[0] == "leaderboard":
        from anomalib_agpt.apps.leaderboard import main as leaderboard_main

        leaderboard_main(args[1:])
        return
    if args and args[0] == "serve":
        from anomalib_agpt.apps.serve.app import main as serve_main

        serve_main(args[1:])
        return
    if args and args[0] in {"-h", "--help"} and len(args) == 1:
        sys.stdout.write(USAGE + "\n")
    from anomalib.cli.cli import AnomalibCLI, configure_logger

    import anomalib_agpt  # noqa: F401  (registers AnomalyGPT for short names)

    configure_logger()
    AnomalibCLI(args=args)


if __name__ == "__main__":
    main()
