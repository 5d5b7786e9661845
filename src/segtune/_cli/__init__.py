"""One module per ``segtune`` subcommand; each provides ``register(subparsers)``."""
