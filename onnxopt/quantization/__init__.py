"""Static int8 quantization: op rules, planning, parameters, calibration and QDQ rewriting.

`passes/quant.py` drives these modules; each one is usable on its own.
"""
