"""`python -m cnnvis_cli` is the `cnnvis` command."""

import sys

from cnnvis_cli.cli import main

sys.exit(main())
