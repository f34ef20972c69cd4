"""Command alias kept for ``python -m util.benchmark``; the tool lives in tools/benchmark.py;
nothing imports this module.

The import sits under the main guard, so importing the library never imports tools/.
"""

import sys

if __name__ == "__main__":
    from tools.benchmark import main

    sys.exit(main())
