"""Export formats: packed ternary weights."""
