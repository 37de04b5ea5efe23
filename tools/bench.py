"""Benchmark cascade's networks against diffusers' and DALLE2-pytorch's at equal size (issue 5).

    python tools/bench.py --setup-peers ~/.cache/cascade/bench-peers   # once: the peers' own venv (~2 min)
    python tools/bench.py --peers ~/.cache/cascade/bench-peers          # full run -> docs/bench.json, docs/bench.md
    cascade bench --quick --json bench.json                             # the short form (a few minutes)

The peers are installed only into their own virtual environment (torch pinned to cascade's,
plus diffusers and dalle2-pytorch from PyPI) and are timed in a subprocess with that
environment's python, talking JSON; cascade never imports them. See cascade/bench.py.
"""

import sys

from cascade.bench import main

if __name__ == "__main__":
    sys.exit(main())
