"""The forward store: its schema (one declaration of every variable), the pooling into kernel weights, the
writer and shard directory, the checking reader, and planted synthetic stores written through the writer."""
