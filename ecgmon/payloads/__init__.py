"""Device payload formats, encoder and decoder side by side, so the daemon and the device simulators can never disagree."""
