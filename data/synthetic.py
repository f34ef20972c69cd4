"""Command alias kept for ``python -m data.synthetic``; the tool lives in tools/synthetic.py;
nothing imports this module.

The import sits under the main guard, so importing the library never imports tools/.
"""

import sys

if __name__ == "__main__":
    from tools.synthetic import main

    sys.exit(main())
