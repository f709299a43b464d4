"""``python -m querytrail.cli``: the ``querytrail`` console script, for subprocesses that must run
it with a given interpreter (the local stack's services, tests)."""

import sys

from querytrail.cli import main

sys.exit(main())
