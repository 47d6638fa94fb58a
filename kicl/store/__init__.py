"""The forward-store contract: writer, reader and planted synthetic stores."""
