"""Local training and defenses: what each user runs on their own photos."""
