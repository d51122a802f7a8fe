"""Allow `python -m kmtui`."""

from kmtui.cli import main

raise SystemExit(main())
