"""Every MoE model type of the installed transformers: tiny builds from their own configs
(:mod:`~workbench.families.build`, :mod:`~workbench.families.shrink`), the checks of the coverage
matrix (:mod:`~workbench.families.coverage`) and its published form (:mod:`~workbench.families.matrix`,
:mod:`~workbench.families.publish`). ``python -m workbench families`` runs it."""
