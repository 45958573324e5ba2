"""CLI subcommands. Each module here has `register(subparsers)`.

A command handler takes the parsed namespace and returns the exit code.
"""
