"""``python -m bench``: run the benchmarks (``--help`` for the flags)."""

from bench.run import main

raise SystemExit(main())
