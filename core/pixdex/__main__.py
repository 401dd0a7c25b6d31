"""`python -m pixdex` (also works from a checkout with PYTHONPATH=core:plugins)."""

from pixdex.cli import main

if __name__ == "__main__":
    main()
