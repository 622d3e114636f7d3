"""The index directory (docs/index-directory.md): format, staging, publishing, sharded and on-disk files, verify."""
