"""Weight files at the bottom of the house: read, recognise, check and convert them (no model code here)."""
