"""Models: the AAVS baseline and the SSP additions."""
