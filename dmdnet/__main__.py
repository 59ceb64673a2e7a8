import sys

from dmdnet.cli import main

sys.exit(main())
