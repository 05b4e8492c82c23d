import sys

from rnnsweep.cli import main

sys.exit(main())
