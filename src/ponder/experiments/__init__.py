"""Experiments: grids of runs (``grid``), job planning (``plan``), executors (``executors``,
``ray_executor``), the sweep and its monitor (``sweep``, ``monitor``), the paper's protocols in
one command (``reproduce``), and speed (``timing``, ``bench``, ``gpucheck``).
"""
