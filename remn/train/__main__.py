"""`python -m remn.train ...` (also what `torchrun ... -m remn.train` runs)."""
import sys

from remn.train.cli import main

sys.exit(main())
