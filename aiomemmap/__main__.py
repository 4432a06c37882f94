"""``python -m aiomemmap``: the same as the ``aiomemmap`` command."""

from __future__ import annotations

from aiomemmap.tools.cli import main

raise SystemExit(main())
