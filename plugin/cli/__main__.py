"""``python -m plugin.cli``, as the ``progemu`` console script."""

import sys

from plugin.cli import main

sys.exit(main())
