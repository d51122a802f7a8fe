"""Everything PKCS#11: the session owner and its one thread, templates, key objects."""
