"""Reading samples from files, for both sides: the exporter's int8 calibration and the device's arrivals.

``readers`` (every file format, whole or streamed), ``limits`` (what one read may cost, charged before unpacking),
``targets`` (multi-label and regression labels as float targets) and ``label_kind`` (an arrival's labels are all
names or all indices). Nothing here imports edgeft.export or edgeft.runtime.
"""
