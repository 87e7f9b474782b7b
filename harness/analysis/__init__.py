"""Analysis of stored results: gates (check), studies (compare), reports, localisation, simulation gaps.

Reads results through the run layer's store; never imported by the run layer."""
