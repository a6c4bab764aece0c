"""The ``prism`` command line.

- :mod:`~prism_analysis.cli.parser`     the framework: one-line errors, exit codes, ``--nproc``, shared options
- :mod:`~prism_analysis.cli.commands`   the analysis commands: audit, cka, trajectory, compare, interpolate
- :mod:`~prism_analysis.cli.references` Hub references of a trajectory (``--revisions``, ``--subfolders``)

``python -m prism_analysis.cli`` runs the analysis commands alone; the ``prism`` script
(:mod:`prism_cli`) adds the training commands of ``prism_train``.
"""
