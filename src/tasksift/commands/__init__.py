"""CLI subcommands: each module here exposes ``register(subparsers)`` and is loaded by tasksift.cli."""
