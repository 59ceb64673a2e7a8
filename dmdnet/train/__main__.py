"""`python -m dmdnet.train CONFIG [--snapshot OUT]`."""
import sys

from dmdnet.train.driver import main

sys.exit(main())
