"""Command alias kept for ``python -m data.check``; the tool lives in tools/check.py;
nothing imports this module.

The import sits under the main guard, so importing the library never imports tools/.
"""

import sys

if __name__ == "__main__":
    from tools.check import main

    sys.exit(main())
