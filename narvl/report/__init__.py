"""`narvl report`: results tables, plots, the predictions gallery and the README results block."""
