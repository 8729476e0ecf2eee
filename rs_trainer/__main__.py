import sys

from rs_trainer.cli import main

sys.exit(main())
