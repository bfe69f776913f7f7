"""The four independently deployed services of the Hybrid Payments suite."""
