"""`python -m compressor.data ROOT`: make sure Fashion-MNIST is present under ROOT (what `make data` runs)."""

import sys

from compressor.data.datasets import main

sys.exit(main())
