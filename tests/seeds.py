"""The seed offset of the statistical tests: `make test-seeds` sets DGALIGN_TEST_SEED_OFFSET=1000."""

import os

OFFSET = int(os.environ.get("DGALIGN_TEST_SEED_OFFSET", "0"))
