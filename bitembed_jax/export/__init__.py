"""Export formats: packed ternary weights (bitnet-2bit, base3) and the ONNX graph (onnx)."""
