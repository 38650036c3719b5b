"""Training: the task network around a method (``models``), what one step computes and the
engines that take it for one run or K stacked runs (``engine``, ``ensemble``), the step as a CUDA
graph (``graphs``), thread counts (``threads``) and the one loop over a group of runs (``train``).
"""
