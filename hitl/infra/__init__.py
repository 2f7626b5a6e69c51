"""Infrastructure: settings, the database and its migrations, the broker, live events, blobs, ids, JSON checks."""
