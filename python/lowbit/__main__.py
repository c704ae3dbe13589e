"""`python -m lowbit` runs the command-line interface."""

from lowbit.cli import main

raise SystemExit(main())
