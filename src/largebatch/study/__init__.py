"""Studies: grids of training runs (batch sizes x optimizers x LR factors x seeds ...), run,
analysed and reported together.

- :mod:`largebatch.study.spec`: study files, validated by the recipe code;
- :mod:`largebatch.study.names`: run folder names, the grid point they state;
- :mod:`largebatch.study.runner`: running a study: the grid, widened LR sweeps, extra seeds;
- :mod:`largebatch.study.sweep`: a cell's LR sweep: best factor, widening, robustness;
- :mod:`largebatch.study.runs`: reading run directories, every file validated;
- :mod:`largebatch.study.report`: ``largebatch report``: tables, results.json, plots.

The critical-batch fit (``largebatch.critical_batch``) reads studies through the same modules.
"""

from largebatch.study.runner import run_study
from largebatch.study.spec import Study, StudyRun, load_study

__all__ = ["Study", "StudyRun", "load_study", "run_study"]
