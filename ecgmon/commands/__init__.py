"""The ``ecgmon`` subcommands, one module per group (the daemon, watching it, replaying to
devices, evaluation, training, audio devices); ``ecgmon.cli`` builds the parser from them."""
