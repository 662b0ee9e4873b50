"""python -m edge_consumer"""

import sys

from .cli import main

sys.exit(main())
