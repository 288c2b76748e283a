"""The Open Inference Protocol (V2): routes, tensor codec, tabular mapping, errors."""
