"""`python -m speechllm.cli ...` (torchrun needs a module to run)."""

import sys

from speechllm.cli import main

sys.exit(main())
