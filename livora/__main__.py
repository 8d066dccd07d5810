"""`python -m livora` is the `livora` command."""

from livora.cli import main

raise SystemExit(main())
