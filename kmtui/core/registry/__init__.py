"""SQLite: the connection, schema and migrations, and named reads and writes."""
