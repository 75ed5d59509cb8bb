"""Blind side-by-side rating of a bench run's answers (web page, SQLite) and the position-debiased pairwise LM judge."""
