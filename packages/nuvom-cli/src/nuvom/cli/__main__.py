"""``python -m nuvom.cli``: the same as the ``nuvom`` command."""

import sys

from nuvom.cli import main

sys.exit(main())
