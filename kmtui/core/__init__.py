"""The domain: token, store, audit, policy. Imports no textual or rich (a test proves it)."""
