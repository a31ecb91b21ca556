"""Adapters between the CLI and the library: wire readers, embedders and writers together."""
