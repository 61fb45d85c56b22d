import sys

from remn.cli import main

sys.exit(main())
