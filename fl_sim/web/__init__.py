"""fl-sim serve: a read-only web view of the run stores (runs, run, user and compare pages, each with a JSON twin)."""
