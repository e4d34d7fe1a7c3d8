import sys

from tinygiant.cli import main

sys.exit(main())
