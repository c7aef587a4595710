"""`python -m clconv <command>`: see clconv.tools.cli."""

from .tools.cli import main

raise SystemExit(main())
