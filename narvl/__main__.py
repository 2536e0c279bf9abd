import sys

from narvl.cli import main

sys.exit(main())
