"""Where the tests find the real public data (../shared/data beside the checkout, or
$LADDER_DATA), and the mark that skips a test saying so when it is not there."""

import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("LADDER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_data = pytest.mark.skipif(not (DATA / "routellm").is_dir(), reason=f"shared data not found at {DATA}")
