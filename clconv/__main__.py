"""`python -m clconv <command>`: see clconv.cli."""

from .cli import main

raise SystemExit(main())
