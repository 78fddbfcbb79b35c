"""`python -m stockade` is the `stockade` command."""

from stockade.cli.entry import main

main()
