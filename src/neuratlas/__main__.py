import sys

from neuratlas.cli import main

sys.exit(main())
