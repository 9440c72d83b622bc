"""iim-relay: the compute-host side of iim."""
