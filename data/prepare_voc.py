"""Command alias kept for ``python -m data.prepare_voc``; the tool lives in tools/prepare_voc.py;
nothing imports this module.

The import sits under the main guard, so importing the library never imports tools/.
"""

import sys

if __name__ == "__main__":
    from tools.prepare_voc import main

    sys.exit(main())
