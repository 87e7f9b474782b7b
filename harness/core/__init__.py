"""The domain core: specs, errors, data, ONNX facts, intake, calibration, metrics, tasks, records, audit.

Imports nothing above it: no backend, run or analysis module."""
