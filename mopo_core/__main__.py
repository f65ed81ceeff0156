import sys

from mopo_core.cli.main import main

sys.exit(main())
