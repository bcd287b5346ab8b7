"""Gateway keys: generation, hashing, display form, and the in-process principal cache."""
