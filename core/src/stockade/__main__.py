"""`python -m stockade` is the `stockade` command."""

from stockade.cli.main import main

main()
