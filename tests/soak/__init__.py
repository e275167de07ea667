"""The chaos soak (issue 11): replicas sharing one secret, killed, frozen, starved of their
token endpoint and cut off from Vault at random, judged by the authorization server's own
records. ``make soak`` runs ten minutes and writes RELIABILITY.md and RELIABILITY.json; a
two-minute variant runs with the integration tests.
"""
