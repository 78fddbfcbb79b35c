"""The `stockade` command."""
