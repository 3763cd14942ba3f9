"""Layout writers: turn a source tree into RAFS bootstraps and blobs."""
