import sys

from nbkit.cli.main import main

sys.exit(main())
