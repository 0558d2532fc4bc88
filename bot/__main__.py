"""``python -m bot``: the same as ``jamgen run``."""

from bot.run import main

raise SystemExit(main())
