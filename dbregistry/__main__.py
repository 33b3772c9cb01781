"""``python -m dbregistry``: the same as the ``dbregistry`` command; see `dbregistry.cli`."""

from ._cli import main

raise SystemExit(main())
