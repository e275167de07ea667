"""End-to-end test in a kind cluster (``make e2e``), and checks of its pieces that run anywhere."""
