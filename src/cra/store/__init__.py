"""Storage adapters: durable implementations of the runtime's ports, and the data directory."""
