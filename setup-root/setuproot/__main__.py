"""`python -m setuproot`."""

import sys

from setuproot.main import main

sys.exit(main())
