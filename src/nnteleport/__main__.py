"""``python -m nnteleport`` = the ``nnteleport`` command."""

from nnteleport.cli import main

raise SystemExit(main())
