"""``python -m sinks``: run the audit sink alone (what ``querytrail sink`` runs)."""

from __future__ import annotations

import logging
import sys

from querytrail.settings import get_settings
from sinks.consumer import run_sink

if __name__ == "__main__":
    logging.basicConfig(
        level=get_settings().log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    sys.exit(run_sink(get_settings()))
