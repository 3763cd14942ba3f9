"""Command-line programs beyond the daemon: image builder and inspector, blob server, bench."""
