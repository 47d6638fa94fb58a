"""Numbers behind the figures and tables (plain numpy/pandas/xarray; never imports matplotlib)."""
