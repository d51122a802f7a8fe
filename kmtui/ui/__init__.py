"""Textual UI: collects intent, shows results; all work happens in kmtui.core."""
