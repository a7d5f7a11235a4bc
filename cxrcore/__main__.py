"""`python -m cxrcore ...`: see cxrcore.cli."""
import sys

from cxrcore.cli import main

sys.exit(main())
