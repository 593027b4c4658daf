"""hepray: ROOT files to images to distributed training on Ray."""

import os

# Ray Train V2, the API hepray is written and tested against (tests/conftest.py sets the same);
# set before Ray Train is imported, in the driver and in every worker that imports hepray.
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

__version__ = "0.1.0"
