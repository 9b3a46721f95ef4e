"""Reports: tables and plots, the Fig. 8 sample grid, drawing code."""
