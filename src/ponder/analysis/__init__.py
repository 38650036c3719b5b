"""Analysis: the paper's numbers and curves (``paper``), a sweep's runs read and aggregated over
seeds (``results``), adaptive against fixed computation at matched cost (``matched``), figures
and the report (``figures``, ``report``).
"""
