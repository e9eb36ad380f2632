"""Static int8 quantization: op rules, planning, calibration, parameters and QDQ rewriting.

`run.py` (`QuantRun`) drives it; `passes/quant.py` calls it. Where the calibration ranges and
histograms are computed: `calibrate.py`.
"""
