"""Reading samples from files, for both sides: the exporter's int8 calibration and the device's arrivals.

``readers`` (every file format, whole or streamed), ``limits`` (what one read may cost, charged before unpacking)
and ``targets`` (multi-label and regression labels as float targets). Nothing here imports edgeft.export or
edgeft.runtime.
"""
