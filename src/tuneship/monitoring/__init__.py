"""Watching what is served: the inference table read back, drift against the training data.

`table` reads the service's inference table (bentos/inference_log.py) and joins feedback;
`reference` finds a model version's training data through its lineage; `drift` runs Evidently;
`monitor.run_monitor` ties them together for `make monitor` or a scheduler.
"""
