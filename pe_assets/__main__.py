"""Command line: `python -m pe_assets run --n N`, `python -m pe_assets make-samples DIR`."""

import sys

from pe_assets.cli import main

sys.exit(main())
