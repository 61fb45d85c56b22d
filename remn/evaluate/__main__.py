import sys

from remn.evaluate.cli import main

sys.exit(main())
