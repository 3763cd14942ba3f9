"""Coverage-guided fuzzing of the RAFS readers (`python -m tools.fuzz`)."""
