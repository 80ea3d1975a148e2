import sys

from swarmlearning.sl.main import main

sys.exit(main())
