"""CLI subcommands, one module each (see cxrcore.cli for the contract)."""
