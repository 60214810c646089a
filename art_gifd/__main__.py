"""``python -m art_gifd``: the ``art-gifd`` command, for environments whose scripts folder is not on ``PATH``."""

from art_gifd.cli import main

raise SystemExit(main())
