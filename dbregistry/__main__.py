"""``python -m dbregistry``: the same as the ``dbregistry`` command; see `dbregistry.cli`."""

from .cli import main

raise SystemExit(main())
