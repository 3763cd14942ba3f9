"""The pynydusd service: CLI, config, FUSE operations, backends, fetcher, cache, API."""
