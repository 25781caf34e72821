"""What every dicomflow service imports: events, the Redis bus, names, settings, logging."""
