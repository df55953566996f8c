import sys

from lightsr.cli import main

sys.exit(main())
