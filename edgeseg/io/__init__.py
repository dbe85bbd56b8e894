"""Scans in, results out, torch-free: the scan readers (NumPy, PNG, NIfTI, DICOM series and their triage), skull
stripping, the QC verdicts, and what a run writes (label maps, the QC mosaic, DICOM SEG and SR, summary.csv
and the run records). May import the top level of edgeseg only; an edge box installs this half without torch.
"""

from __future__ import annotations
