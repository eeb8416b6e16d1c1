"""`python -m ehrjepa ...` (also what `torchrun -m ehrjepa train ...` runs)."""
import sys

from ehrjepa.cli import main

sys.exit(main())
